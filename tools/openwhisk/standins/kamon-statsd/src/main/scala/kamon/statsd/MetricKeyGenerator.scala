// SPDX-License-Identifier: Apache-2.0
// Stand-in for the two types of io.kamon:kamon-statsd_2.13 that OpenWhisk's common/scala compiles
// against (Logging.scala: WhiskStatsDMetricKeyGenerator). The registry reachable here serves no
// kamon-statsd jar for Scala 2.13 at any version. There is no StatsD reporter in this stand-in:
// kamon's module loader finds no `factory` for `kamon.modules.statsd-reporter` and skips it, so
// metrics are not pushed to StatsD (OpenWhisk's Prometheus endpoint, /metrics, is unaffected).
package kamon.statsd

import com.typesafe.config.Config
import kamon.tag.{Tag, TagSet}

/** Turns a metric name and its tags into one StatsD key (the kamon-statsd 2.x interface). */
trait MetricKeyGenerator {
  def generateKey(name: String, tags: TagSet): String
}

/**
 * `[service].[host].[metric name].[tag key].[tag value]...`, tags sorted by key, each part with
 * `.`, `:` and spaces replaced by `_` (kamon-statsd's default "normalize" strategy). Settings are
 * read from `kamon.statsd.simple-metric-key-generator` when present.
 */
class SimpleMetricKeyGenerator(config: Config) extends MetricKeyGenerator {
  private val settingsPath = "kamon.statsd.simple-metric-key-generator"
  private def setting(key: String, default: String): String =
    if (config.hasPath(s"$settingsPath.$key")) config.getString(s"$settingsPath.$key") else default

  private val service: String =
    if (config.hasPath("kamon.environment.service")) config.getString("kamon.environment.service") else "kamon"
  private val includeHostname: Boolean = setting("include-hostname", "true").toBoolean
  private val hostname: String = setting("hostname-override", "none") match {
    case "none" =>
      if (config.hasPath("kamon.environment.host")) config.getString("kamon.environment.host")
      else java.net.InetAddress.getLocalHost.getHostName
    case other => other
  }

  protected def normalize(s: String): String =
    s.replace(": ", "-").replace(":", "-").replace(" ", "_").replace("/", "_").replace(".", "_")

  override def generateKey(name: String, tags: TagSet): String = {
    val tagParts = tags.all().sortBy(_.key).flatMap(t => Seq(normalize(t.key), normalize(String.valueOf(Tag.unwrapValue(t)))))
    val prefix = if (includeHostname) Seq(service, normalize(hostname)) else Seq(service)
    (prefix ++ Seq(normalize(name)) ++ tagParts).mkString(".")
  }
}
