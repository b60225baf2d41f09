// SPDX-License-Identifier: Apache-2.0
// Stand-in: see ScalaKryo.scala.
package io.altoo.serialization.kryo.pekko

import org.apache.pekko.actor.ExtendedActorSystem
import org.apache.pekko.serialization.Serializer

/** The Pekko-side initializer that OpenWhisk's CompatibleKryoInitializer extends. */
class DefaultKryoInitializer extends io.altoo.serialization.kryo.scala.DefaultKryoInitializer

/**
 * Loads, so that a scheduler whose configuration binds messages to `kryo` starts, but refuses to
 * serialize. Pekko serializes only what crosses to another node: a single scheduler never calls
 * it. A cluster of several schedulers needs the real io.altoo:pekko-kryo-serialization; this one
 * fails such a send with the reason instead of sending something the other side cannot read.
 */
class PekkoKryoSerializer(val system: ExtendedActorSystem) extends Serializer {
  override val identifier: Int = 123454323 // the real serializer's id
  override def includeManifest: Boolean = false

  private def refuse(what: String): Nothing =
    throw new UnsupportedOperationException(
      s"$what: io.altoo pekko-kryo-serialization is a stand-in in this build (tools/openwhisk/standins): " +
        "it serves one scheduler; several schedulers need the real library")

  override def toBinary(o: AnyRef): Array[Byte] = refuse(s"serializing ${o.getClass.getName}")
  override def fromBinary(bytes: Array[Byte], manifest: Option[Class[_]]): AnyRef = refuse("deserializing")
}
