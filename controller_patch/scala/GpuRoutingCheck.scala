/*
 * Licensed to the Apache Software Foundation (ASF) under one or more
 * contributor license agreements.  See the NOTICE file distributed with
 * this work for additional information regarding copyright ownership.
 * The ASF licenses this file to You under the Apache License, Version 2.0
 * (the "License"); you may not use this file except in compliance with
 * the License.  You may obtain a copy of the License at
 *
 *     http://www.apache.org/licenses/LICENSE-2.0
 *
 * Unless required by applicable law or agreed to in writing, software
 * distributed under the License is distributed on an "AS IS" BASIS,
 * WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 * See the License for the specific language governing permissions and
 * limitations under the License.
 */

package org.apache.openwhisk.core.loadBalancer

/**
 * The routing table of [[GpuRouting]], case by case. Plain Scala, no test framework: prints one line per failed case
 * and exits 1 if any failed (0 and a summary otherwise). Run by `tox -e deploy` (tests/deploy/test_gpu_routing_scala.py).
 */
object GpuRoutingCheck {

  /** An invoker as the balancer sees it: its id, the tags of its last ping, and whether it is usable. */
  final case class Inv(id: Int, tags: Seq[String] = Nil, healthy: Boolean = true)

  def cpu(id: Int): Inv = Inv(id)
  def gpu(id: Int, tags: String*): Inv = Inv(id, if (tags.isEmpty) Seq("gpu") else tags)

  // OpenWhisk's defaults (reference.conf: managed-fraction 90%, blackbox-fraction 10%)
  val ManagedFraction = 0.9
  val BlackboxFraction = 0.1
  val Defaults = GpuRoutingConfig()
  val CpuOnGpu = GpuRoutingConfig(cpuOnGpuInvokers = true)

  private var checked = 0
  private var failures = List.empty[String]

  def check(name: String, ok: Boolean, detail: => String = ""): Unit = {
    checked += 1
    if (!ok) failures = s"FAIL $name${if (detail.isEmpty) "" else s": $detail"}" :: failures
  }

  def expectEqual[A](name: String, actual: A, expected: A): Unit =
    check(name, actual == expected, s"got $actual, expected $expected")

  /** One row of the routing table: an action, the invokers, the settings, and the invoker ids it may land on. */
  final case class Row(name: String,
                       kind: String,
                       resources: Option[Seq[String]],
                       invokers: IndexedSeq[Inv],
                       expected: Seq[Int],
                       blackbox: Boolean = false,
                       config: GpuRoutingConfig = Defaults)

  val fourMixed = IndexedSeq(cpu(0), cpu(1), gpu(2), gpu(3))
  val cpuOnly = IndexedSeq(cpu(0), cpu(1))

  val table = Seq(
    // GPU kind, annotation, both, neither
    Row("GPU kind goes to the GPU invokers only", "python:3-gpu", None, fourMixed, Seq(2, 3)),
    Row("gpu annotation goes to the GPU invokers only", "nodejs:20", Some(Seq("gpu")), fourMixed, Seq(2, 3)),
    Row("GPU kind and annotation", "python:3-gpu", Some(Seq("disk", "gpu")), fourMixed, Seq(2, 3)),
    Row("neither: managed work stays off the GPU invokers", "nodejs:20", None, fourMixed, Seq(0, 1)),
    Row("an annotation without gpu is CPU work", "nodejs:20", Some(Seq("disk")), fourMixed, Seq(0, 1)),
    Row("an empty annotation is CPU work", "python:3", Some(Nil), fourMixed, Seq(0, 1)),
    Row("a kind that only contains -gpu is CPU work", "python:3-gpu-legacy", None, fourMixed, Seq(0, 1)),
    Row("neither, blackbox: the last untagged invoker", "blackbox", None, fourMixed, Seq(1), blackbox = true),
    Row("blackbox image with the gpu annotation", "blackbox", Some(Seq("gpu")), fourMixed, Seq(2, 3), blackbox = true),
    // tags are matched whole, among other tags
    Row("gpu among other tags", "python:3-gpu", None, IndexedSeq(cpu(0), gpu(1, "fast", "gpu")), Seq(1)),
    Row("a tag that only contains gpu is no GPU invoker", "python:3-gpu", None, IndexedSeq(cpu(0), gpu(1, "gpus")), Nil),
    Row("... and takes CPU work", "nodejs:20", None, IndexedSeq(cpu(0), gpu(1, "gpus")), Seq(0, 1)),
    // no GPU invoker: GPU work has nowhere to go (503), it never falls back to a CPU invoker
    Row("no GPU invoker: GPU kind gets no pool", "python:3-gpu", None, cpuOnly, Nil),
    Row("no GPU invoker: gpu annotation gets no pool", "nodejs:20", Some(Seq("gpu")), cpuOnly, Nil),
    Row("no GPU invoker: CPU work as before", "nodejs:20", None, cpuOnly, Seq(0, 1)),
    Row("no invoker at all", "python:3-gpu", None, IndexedSeq.empty, Nil),
    // the flag: CPU work may use GPU invokers; GPU work still uses only them
    Row("flag on: CPU work on every invoker", "nodejs:20", None, fourMixed, Seq(0, 1, 2, 3), config = CpuOnGpu),
    Row("flag on: GPU work still on GPU invokers only", "python:3-gpu", None, fourMixed, Seq(2, 3), config = CpuOnGpu),
    Row("flag on: blackbox on the last invoker", "blackbox", None, fourMixed, Seq(3), blackbox = true, config = CpuOnGpu),
    Row("flag off: CPU work with only GPU invokers has no pool", "nodejs:20", None, IndexedSeq(gpu(0)), Nil),
    Row("flag on: CPU work with only GPU invokers", "nodejs:20", None, IndexedSeq(gpu(0)), Seq(0), config = CpuOnGpu),
    // one invoker
    Row("one GPU invoker takes GPU work", "python:3-gpu", None, IndexedSeq(gpu(0)), Seq(0)),
    Row("one CPU invoker takes managed work", "nodejs:20", None, IndexedSeq(cpu(0)), Seq(0)),
    Row("one CPU invoker takes blackbox work too", "blackbox", None, IndexedSeq(cpu(0)), Seq(0), blackbox = true),
    // many invokers, GPU ones interleaved: the GPU pool keeps their order; managed = first ceil(0.9 * 10) untagged
    Row("many: GPU pool", "python:3-gpu", None, many, Seq(1, 4, 7, 10, 13)),
    Row("many: managed pool", "nodejs:20", None, many, manyCpu.take(9)),
    Row("many: blackbox pool", "blackbox", None, many, manyCpu.takeRight(1), blackbox = true),
    // the settings are honoured
    Row(
      "another suffix and tag",
      "python:3-cuda",
      None,
      IndexedSeq(gpu(0), gpu(1, "nvidia")),
      Seq(1),
      config = GpuRoutingConfig(tag = "nvidia", kindSuffix = "-cuda")),
    Row(
      "another suffix: -gpu is CPU work",
      "python:3-gpu",
      None,
      IndexedSeq(cpu(0), gpu(1, "nvidia")),
      Seq(0),
      config = GpuRoutingConfig(tag = "nvidia", kindSuffix = "-cuda")))

  lazy val many: IndexedSeq[Inv] = (0 until 15).map(i => if (i % 3 == 1) gpu(i) else cpu(i))
  lazy val manyCpu: Seq[Int] = many.filterNot(_.tags.contains("gpu")).map(_.id)

  def route(row: Row): RoutingPool[Inv] = {
    val needsGpu = GpuRouting.requiresGpu(row.kind, row.resources, row.config)
    val pools = GpuRouting.pools(row.invokers, (i: Inv) => i.tags, ManagedFraction, BlackboxFraction, row.config)
    GpuRouting.poolFor(pools, needsGpu, row.blackbox)
  }

  def checkTable(): Unit = table.foreach { row =>
    val pool = route(row)
    expectEqual(row.name, pool.invokers.map(_.id), row.expected)
    expectEqual(s"${row.name}: step sizes belong to the pool", pool.stepSizes, GpuRouting.pairwiseCoprimeNumbersUntil(row.expected.size))
    // an empty pool gives no start (No invokers available); a non-empty one a start inside it
    Seq(0, 1, 7, 12345, Int.MaxValue, Int.MinValue, -3).foreach { hash =>
      GpuRouting.start(hash, pool) match {
        case None => check(s"${row.name}: start for hash $hash", pool.invokers.isEmpty, "no start over a non-empty pool")
        case Some((home, step)) =>
          check(
            s"${row.name}: start for hash $hash",
            home >= 0 && home < pool.invokers.size && pool.stepSizes.contains(step),
            s"home $home, step $step over ${pool.invokers.size} invokers with step sizes ${pool.stepSizes}")
      }
    }
  }

  /** Unhealthy GPU invokers stay in the GPU pool (the walk skips them) and no healthy CPU invoker is added to it. */
  def checkNoHealthyGpuInvoker(): Unit = {
    val invokers = IndexedSeq(cpu(0), gpu(1).copy(healthy = false), cpu(2), gpu(3).copy(healthy = false))
    val pools = GpuRouting.pools(invokers, (i: Inv) => i.tags, ManagedFraction, BlackboxFraction, Defaults)
    val gpuPool = GpuRouting.poolFor(pools, needsGpu = true, blackbox = false)
    expectEqual("no healthy GPU invoker: the GPU pool is the unhealthy GPU invokers", gpuPool.invokers.map(_.id), Seq(1, 3))
    check("no healthy GPU invoker: nothing usable for GPU work", !gpuPool.invokers.exists(_.healthy))
    expectEqual("no healthy GPU invoker: CPU work as before", pools.managed.invokers.map(_.id), Seq(0, 2))
  }

  def checkRequiresGpu(): Unit = {
    expectEqual("kind suffix", GpuRouting.requiresGpu("python:3-gpu", None, Defaults), true)
    expectEqual("annotation", GpuRouting.requiresGpu("python:3", Some(Seq("gpu")), Defaults), true)
    expectEqual("both", GpuRouting.requiresGpu("python:3-gpu", Some(Seq("gpu")), Defaults), true)
    expectEqual("neither", GpuRouting.requiresGpu("python:3", None, Defaults), false)
    expectEqual("other resources", GpuRouting.requiresGpu("python:3", Some(Seq("disk", "cpu")), Defaults), false)
    expectEqual("the suffix, not a prefix", GpuRouting.requiresGpu("gpu-python:3", None, Defaults), false)
    expectEqual("the flag does not change what needs a GPU", GpuRouting.requiresGpu("python:3", None, CpuOnGpu), false)
  }

  /** Step sizes are coprime with the pool's size and with each other, so every walk visits every invoker. */
  def checkStepSizes(): Unit = {
    expectEqual("step sizes for 0 invokers", GpuRouting.pairwiseCoprimeNumbersUntil(0), IndexedSeq.empty[Int])
    expectEqual("step sizes for 1 invoker", GpuRouting.pairwiseCoprimeNumbersUntil(1), IndexedSeq(1))
    expectEqual("step sizes for 10 invokers", GpuRouting.pairwiseCoprimeNumbersUntil(10), IndexedSeq(1, 3, 7))
    (0 to 40).foreach { n =>
      val pool = GpuRouting.pool((0 until n).toIndexedSeq)
      check(s"$n invokers: step sizes present exactly when invokers are", pool.stepSizes.nonEmpty == (n > 0))
      pool.stepSizes.foreach { s =>
        check(s"$n invokers: step $s coprime with $n", GpuRouting.gcd(s, n) == 1)
        pool.stepSizes.filter(_ != s).foreach { t =>
          check(s"$n invokers: steps $s and $t coprime", GpuRouting.gcd(s, t) == 1)
        }
        val visited = (0 until n).map(k => (k * s) % n).toSet
        check(s"$n invokers: step $s visits every invoker", visited.size == n, s"visits ${visited.size}")
      }
    }
    // the same action always starts at the same invoker
    val pool = GpuRouting.pool((0 until 7).toIndexedSeq)
    expectEqual("start is deterministic", GpuRouting.start(987654, pool), GpuRouting.start(987654, pool))
    expectEqual("start for hash 10 over 7 invokers", GpuRouting.start(10, pool), Some((3, 3)))
  }

  def main(args: Array[String]): Unit = {
    checkRequiresGpu()
    checkTable()
    checkNoHealthyGpuInvoker()
    checkStepSizes()
    failures.reverse.foreach(println)
    if (failures.nonEmpty) {
      println(s"GpuRoutingCheck: ${failures.size} of $checked checks FAILED")
      sys.exit(1)
    }
    println(s"GpuRoutingCheck: all $checked checks passed (${table.size} routing table rows)")
  }
}
