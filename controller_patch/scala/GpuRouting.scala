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

import java.nio.charset.StandardCharsets
import java.security.MessageDigest

import scala.annotation.tailrec

/**
 * Routing of GPU work to GPU invokers (`whisk.loadbalancer.gpu-routing`).
 *
 * @param tag the invoker tag (`whisk.invoker.resource.tags`, sent in every ping) that marks a GPU invoker
 * @param kindSuffix actions whose kind ends with this suffix need a GPU invoker
 * @param cpuOnGpuInvokers whether actions that need no GPU may also be scheduled to GPU invokers
 * @param preferHolders whether GPU work first tries the GPU invokers whose pings say they hold its model
 *                      (`held:<digest>` tags), before the classic walk from its home invoker
 */
case class GpuRoutingConfig(tag: String = "gpu",
                            kindSuffix: String = "-gpu",
                            cpuOnGpuInvokers: Boolean = false,
                            preferHolders: Boolean = false)

/**
 * A list of invokers and the step sizes for walking it, made by [[GpuRouting.pool]] so that the step sizes belong to
 * the list (non-empty exactly when the list is). The balancer publishes the pools as one value, so that a concurrent
 * `publish` never sees a list without its step sizes.
 */
final case class RoutingPool[I](invokers: IndexedSeq[I], stepSizes: IndexedSeq[Int])

/** The three pools the balancer schedules over: managed kinds, blackbox images and GPU work. */
final case class RoutingPools[I](managed: RoutingPool[I], blackbox: RoutingPool[I], gpu: RoutingPool[I])

object RoutingPools {
  def empty[I]: RoutingPools[I] = {
    val none = GpuRouting.pool(IndexedSeq.empty[I])
    RoutingPools(none, none, none)
  }
}

/**
 * The GPU routing decision of the ShardingContainerPoolBalancer, in plain Scala: which actions need a GPU, how the
 * invokers are split into pools, where the walk over a pool starts, and which invokers GPU work prefers (those
 * holding its model). The balancer calls it with values it already has; nothing here knows Pekko, spray-json or
 * OpenWhisk's entities.
 */
object GpuRouting {

  /**
   * Whether an action must run on a GPU invoker: its kind ends with the configured suffix (`python:3-gpu`) or its
   * `invoker-resources` annotation (the one the FPC scheduler reads; None when absent or not a list of strings)
   * names the GPU tag.
   */
  def requiresGpu(kind: String, invokerResources: Option[Seq[String]], config: GpuRoutingConfig): Boolean =
    kind.endsWith(config.kindSuffix) || invokerResources.exists(_.contains(config.tag))

  /** A pool over `invokers`, with their pairwise coprime step sizes. */
  def pool[I](invokers: IndexedSeq[I]): RoutingPool[I] =
    RoutingPool(invokers, pairwiseCoprimeNumbersUntil(invokers.size))

  /**
   * Splits the invokers into the pools. Invokers tagged `config.tag` form the GPU pool. The managed and blackbox pools
   * are cut, as before, from the first `ceil(N * managedFraction)` and last `floor(N * blackboxFraction)` (at least
   * one each, so they overlap for small N) of the other invokers, or of all invokers with `cpuOnGpuInvokers`.
   *
   * @param tags the tags an invoker sent in its last ping
   */
  def pools[I](invokers: IndexedSeq[I],
               tags: I => Seq[String],
               managedFraction: Double,
               blackboxFraction: Double,
               config: GpuRoutingConfig): RoutingPools[I] = {
    val isGpu = (i: I) => tags(i).contains(config.tag)
    val general = if (config.cpuOnGpuInvokers) invokers else invokers.filterNot(isGpu)
    val managed = math.max(1, math.ceil(general.size.toDouble * managedFraction).toInt)
    val blackboxes = math.max(1, math.floor(general.size.toDouble * blackboxFraction).toInt)
    RoutingPools(pool(general.take(managed)), pool(general.takeRight(blackboxes)), pool(invokers.filter(isGpu)))
  }

  /** The pool an action is scheduled over: GPU work only to GPU invokers, the rest as before. */
  def poolFor[I](pools: RoutingPools[I], needsGpu: Boolean, blackbox: Boolean): RoutingPool[I] =
    if (needsGpu) pools.gpu else if (blackbox) pools.blackbox else pools.managed

  /**
   * Where the walk over `pool` starts for an action with this hash: (home invoker index, step size). None when the
   * pool is empty, which the balancer reports as `No invokers available`.
   */
  def start(hash: Int, pool: RoutingPool[_]): Option[(Int, Int)] =
    if (pool.invokers.isEmpty || pool.stepSizes.isEmpty) None
    else Some((math.abs(hash % pool.invokers.size), pool.stepSizes(math.abs(hash % pool.stepSizes.size))))

  /** The tag prefix of a held model in a GPU invoker's pings: `held:<digest>` (invoker/gpu/locality.py). */
  val HeldTagPrefix = "held:"

  /** Hex characters of a digest: 48 bits, so 256 held tags keep a ping near 5 KB and rarely match falsely. */
  val DigestHexChars = 12

  /**
   * What a warm container of an action that can take an activation is known by, as far as `publish` knows it: the
   * invocation namespace (containers are not shared across namespaces) and the action's fully qualified name with
   * its version (`action.fullyQualifiedName(true).asString`, `ns/pkg/name@0.0.2`: a container of another version is
   * not reused). Neither contains `|`.
   */
  def actionKey(invocationNamespace: String, actionWithVersion: String): String =
    s"$invocationNamespace|$actionWithVersion"

  /** The first [[DigestHexChars]] hex characters of the SHA-256 of the UTF-8 [[actionKey]], as the invoker pings it. */
  def actionDigest(invocationNamespace: String, actionWithVersion: String): String = {
    val key = actionKey(invocationNamespace, actionWithVersion).getBytes(StandardCharsets.UTF_8)
    MessageDigest
      .getInstance("SHA-256")
      .digest(key)
      .take(DigestHexChars / 2)
      .map(b => "%02x".format(b & 0xff))
      .mkString
  }

  def heldTag(digest: String): String = HeldTagPrefix + digest

  /** Whether an invoker whose last ping carried `tags` holds the model of the action with this digest. */
  def holds(tags: Seq[String], digest: String): Boolean = tags.contains(heldTag(digest))

  /** The digests an invoker's tags say it holds. */
  def heldDigests(tags: Seq[String]): Set[String] =
    tags.collect { case t if t.startsWith(HeldTagPrefix) => t.substring(HeldTagPrefix.length) }.toSet

  /** The pool indexes `ShardingContainerPoolBalancer.schedule` tries, in order: home, home + step, ... (each once). */
  def walk(size: Int, home: Int, step: Int): IndexedSeq[Int] =
    (0 until size).map(k => ((home + k.toLong * step) % size).toInt)

  /**
   * The locality rule as an order: the holders first, in walk order, then the others in walk order. Every candidate
   * is still taken only if it is usable and has capacity, and when none has, the random fallback of `schedule`
   * applies: the rule only orders. [[firstHolder]] is how the balancer runs it.
   */
  def preferHolders(walk: IndexedSeq[Int], holds: Int => Boolean): IndexedSeq[Int] = {
    val (holders, others) = walk.partition(holds)
    holders ++ others
  }

  /**
   * The holder pass of `publish` (with `preferHolders`, for GPU work): the first invoker of the pool, in walk order
   * from home, that holds `digest` and that `tryAcquire` takes: the balancer's own capacity check (usable, a slot
   * acquired), called for holders only, in that order, until one is taken. None: no holder took it, and the classic
   * `schedule` follows unchanged, so the order is [[preferHolders]]'s, the random fallback included.
   */
  def firstHolder[I](pool: RoutingPool[I], home: Int, step: Int, tags: I => Seq[String], digest: String)(
    tryAcquire: I => Boolean): Option[I] =
    walk(pool.invokers.size, home, step).iterator
      .map(pool.invokers)
      .filter(i => holds(tags(i), digest))
      .find(tryAcquire)

  /** Euclidean algorithm to determine the greatest-common-divisor */
  @tailrec
  def gcd(a: Int, b: Int): Int = if (b == 0) a else gcd(b, a % b)

  /** Returns pairwise coprime numbers until x (all coprime with x). */
  def pairwiseCoprimeNumbersUntil(x: Int): IndexedSeq[Int] =
    (1 to x).foldLeft(IndexedSeq.empty[Int])((primes, cur) => {
      if (gcd(cur, x) == 1 && primes.forall(i => gcd(i, cur) == 1)) {
        primes :+ cur
      } else primes
    })
}
