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

  // ------------------------------------------------------------------------------------------ model locality

  /**
   * Fixed vectors that tests/gpu/test_locality.py asserts too: the digest the invoker pings and the one `publish`
   * looks up are the same string, and the Python port of the walk (invoker/gpu/locality.py) starts where this one does.
   */
  def checkCrossLanguageVectors(): Unit = {
    expectEqual("action key", GpuRouting.actionKey("guest", "guest/models/resnet50@0.0.1"), "guest|guest/models/resnet50@0.0.1")
    expectEqual("action digest", GpuRouting.actionDigest("guest", "guest/models/resnet50@0.0.1"), "9b7d16ba6be8")
    expectEqual("held tag", GpuRouting.heldTag("9b7d16ba6be8"), "held:9b7d16ba6be8")
    expectEqual("hashCode of guest", "guest".hashCode, 98708952)
    expectEqual("hashCode of the action", "guest/models/resnet50".hashCode, 1853796390)
    expectEqual("hashCode over UTF-16 with a surrogate pair", "\u00fc\ud83d\ude00".hashCode, 2015071)
    expectEqual("hashCode that is Int.MinValue", "polygenelubricants".hashCode, Int.MinValue)
    // ShardingContainerPoolBalancer.generateHash: (namespace.hashCode ^ action.hashCode).abs
    val hash = ("guest".hashCode ^ "guest/models/resnet50".hashCode).abs
    expectEqual("generateHash", hash, 1805426174)
    val seven = GpuRouting.pool((0 until 7).toIndexedSeq)
    expectEqual("start over 7 invokers", GpuRouting.start(hash, seven), Some((6, 3)))
    expectEqual("start for Int.MinValue over 7 invokers", GpuRouting.start(Int.MinValue, seven), Some((2, 1)))
    expectEqual("walk over 7 invokers", GpuRouting.walk(7, 3, 3), IndexedSeq(3, 6, 2, 5, 1, 4, 0))
    // what changes the digest: the invocation namespace, the version, the package
    val others = Seq(
      GpuRouting.actionDigest("alice", "guest/models/resnet50@0.0.1"),
      GpuRouting.actionDigest("guest", "guest/models/resnet50@0.0.2"),
      GpuRouting.actionDigest("guest", "guest/resnet50@0.0.1"))
    check("the digest separates namespace, version and package", (others :+ "9b7d16ba6be8").distinct.size == 4)
    check("digests are 12 lower-case hex characters", others.forall(_.matches("[0-9a-f]{12}")))
    expectEqual("held digests of tags", GpuRouting.heldDigests(Seq("gpu", "held:aa", "gpu-mps", "held:bb", "holder")), Set("aa", "bb"))
  }

  /** A GPU invoker for the locality cases, with the digests it pings as held. */
  def holder(id: Int, held: String*): Inv = Inv(id, Seq("gpu", "gpu-mps") ++ held.map(GpuRouting.heldTag))

  /**
   * `publish` as the patch wires it, over the GPU pool with capacities: the holder pass (GPU work with prefer-holders),
   * then the classic `schedule` (first usable invoker with a free slot in walk order, else a random usable one:
   * "random" here). Returns the choice and the invokers whose capacity was tried, in order.
   */
  def publish(invokers: IndexedSeq[Inv],
              free: Map[Int, Int],
              hash: Int,
              digest: String,
              needsGpu: Boolean = true,
              config: GpuRoutingConfig = Defaults.copy(preferHolders = true)): (String, Seq[Int]) = {
    val pools = GpuRouting.pools(invokers, (i: Inv) => i.tags, ManagedFraction, BlackboxFraction, config)
    val pool = GpuRouting.poolFor(pools, needsGpu, blackbox = false)
    var slots = free
    var tried = Vector.empty[Int]
    def tryAcquire(i: Inv): Boolean = {
      tried :+= i.id
      val ok = i.healthy && slots.getOrElse(i.id, 0) > 0
      if (ok) slots = slots.updated(i.id, slots(i.id) - 1)
      ok
    }
    val choice = GpuRouting.start(hash, pool).map {
      case (home, step) =>
        val preferred =
          if (needsGpu && config.preferHolders) GpuRouting.firstHolder(pool, home, step, (i: Inv) => i.tags, digest)(tryAcquire)
          else None
        preferred
          .orElse(GpuRouting.walk(pool.invokers.size, home, step).map(pool.invokers).find(tryAcquire))
          .map(i => s"inv${i.id}")
          .getOrElse(if (pool.invokers.exists(_.healthy)) "random" else "none")
    }
    (choice.getOrElse("none"), tried)
  }

  def checkPreferHolders(): Unit = {
    val d = GpuRouting.actionDigest("guest", "guest/models/resnet50@0.0.1")
    // five GPU invokers 10..14 (pool indexes 0..4); hash 17: home 2 (inv12), step 3: walk 2, 0, 3, 1, 4
    val hash = 17
    expectEqual("locality: the walk of the cases", GpuRouting.start(hash, GpuRouting.pool((0 until 5).toIndexedSeq)), Some((2, 3)))
    def gpus(held: Map[Int, Seq[String]], unhealthy: Set[Int] = Set.empty): IndexedSeq[Inv] =
      (10 to 14).map(id => holder(id, held.getOrElse(id, Nil): _*).copy(healthy = !unhealthy(id)))
    val room = (10 to 14).map(_ -> 1).toMap

    expectEqual("no holder: classic, home first", publish(gpus(Map.empty), room, hash, d), ("inv12", Seq(12)))
    expectEqual("a holder is preferred over home", publish(gpus(Map(13 -> Seq(d))), room, hash, d), ("inv13", Seq(13)))
    expectEqual(
      "two holders: the first in walk order",
      publish(gpus(Map(14 -> Seq(d), 10 -> Seq(d))), room, hash, d),
      ("inv10", Seq(10)))
    expectEqual(
      "a full holder: the next holder",
      publish(gpus(Map(14 -> Seq(d), 10 -> Seq(d))), room.updated(10, 0), hash, d),
      ("inv14", Seq(10, 14)))
    expectEqual(
      "the only holder full: the classic walk from home",
      publish(gpus(Map(13 -> Seq(d))), room.updated(13, 0), hash, d),
      ("inv12", Seq(13, 12)))
    expectEqual(
      "an unhealthy holder is skipped",
      publish(gpus(Map(13 -> Seq(d)), unhealthy = Set(13)), room, hash, d),
      ("inv12", Seq(13, 12)))
    expectEqual(
      "the holder full and home full: the classic walk goes on",
      publish(gpus(Map(13 -> Seq(d))), room.updated(13, 0).updated(12, 0), hash, d),
      ("inv10", Seq(13, 12, 10)))
    expectEqual(
      "everything full: the classic random fallback",
      publish(gpus(Map(13 -> Seq(d))), room.map { case (id, _) => id -> 0 }, hash, d),
      ("random", Seq(13, 12, 10, 13, 11, 14)))
    expectEqual(
      "holders of other models only: classic",
      publish(gpus(Map(13 -> Seq("0123456789ab"), 11 -> Seq("ba9876543210"))), room, hash, d),
      ("inv12", Seq(12)))
    expectEqual(
      "home holds it: home",
      publish(gpus(Map(12 -> Seq(d), 13 -> Seq(d))), room, hash, d),
      ("inv12", Seq(12)))
    expectEqual(
      "flag off: classic",
      publish(gpus(Map(13 -> Seq(d))), room, hash, d, config = Defaults),
      ("inv12", Seq(12)))
    check("the flag is off by default", !GpuRoutingConfig().preferHolders)
    // CPU work is unaffected, even with holders tagged and the flag on: the managed pool, classic walk
    val mixed = IndexedSeq(cpu(0), cpu(1), holder(2, d), holder(3, d))
    val cpuWork = publish(mixed, Map(0 -> 1, 1 -> 1, 2 -> 1, 3 -> 1), hash, d, needsGpu = false)
    check("CPU work is unaffected", cpuWork._1 == "inv1" && cpuWork._2 == Seq(1), s"got $cpuWork")
    // held tags do not make an invoker a GPU invoker, nor take one out of the GPU pool
    val pools = GpuRouting.pools(
      IndexedSeq(cpu(0), Inv(1, Seq(GpuRouting.heldTag(d))), holder(2, d)),
      (i: Inv) => i.tags,
      ManagedFraction,
      BlackboxFraction,
      Defaults)
    expectEqual("held tags alone make no GPU invoker", pools.gpu.invokers.map(_.id), Seq(2))

    // the order, as the simulator's prefer_holders has it
    val walk = GpuRouting.walk(5, 2, 3)
    expectEqual("order: no holder", GpuRouting.preferHolders(walk, Set.empty[Int]), walk)
    expectEqual("order: holders first, in walk order", GpuRouting.preferHolders(walk, Set(4, 0)), IndexedSeq(0, 4, 2, 3, 1))
    // every walk of every pool size is a permutation, and the preferred order too
    (1 to 30).foreach { n =>
      GpuRouting.pairwiseCoprimeNumbersUntil(n).foreach { step =>
        val w = GpuRouting.walk(n, n / 2, step)
        check(s"walk over $n with step $step visits each once", w.sorted == (0 until n))
        check(s"preferred order over $n with step $step visits each once", GpuRouting.preferHolders(w, _ % 3 == 0).sorted == (0 until n))
      }
    }
  }

  def main(args: Array[String]): Unit = {
    checkRequiresGpu()
    checkTable()
    checkNoHealthyGpuInvoker()
    checkStepSizes()
    checkCrossLanguageVectors()
    checkPreferHolders()
    failures.reverse.foreach(println)
    if (failures.nonEmpty) {
      println(s"GpuRoutingCheck: ${failures.size} of $checked checks FAILED")
      sys.exit(1)
    }
    println(s"GpuRoutingCheck: all $checked checks passed (${table.size} routing table rows)")
  }
}
