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

import scala.annotation.tailrec

/**
 * Routing of GPU work to GPU invokers (`whisk.loadbalancer.gpu-routing`).
 *
 * @param tag the invoker tag (`whisk.invoker.resource.tags`, sent in every ping) that marks a GPU invoker
 * @param kindSuffix actions whose kind ends with this suffix need a GPU invoker
 * @param cpuOnGpuInvokers whether actions that need no GPU may also be scheduled to GPU invokers
 */
case class GpuRoutingConfig(tag: String = "gpu", kindSuffix: String = "-gpu", cpuOnGpuInvokers: Boolean = false)

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
 * invokers are split into pools, and where the walk over a pool starts. The balancer calls it with values it already
 * has; nothing here knows Pekko, spray-json or OpenWhisk's entities.
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
