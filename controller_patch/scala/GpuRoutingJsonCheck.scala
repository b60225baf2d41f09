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

import spray.json.{JsArray, JsNumber, JsObject, JsString, JsValue}

/**
 * How [[GpuRoutingJson]] reads the `invoker-resources` annotation, and what [[GpuRouting]] makes of it. Plain Scala
 * with spray-json: exits 1 if any case fails.
 */
object GpuRoutingJsonCheck {

  def main(args: Array[String]): Unit = {
    val cases: Seq[(String, Option[JsValue], Option[Seq[String]], Boolean)] = Seq(
      ("absent", None, None, false),
      ("a list with gpu", Some(JsArray(JsString("disk"), JsString("gpu"))), Some(Seq("disk", "gpu")), true),
      ("a list without gpu", Some(JsArray(JsString("disk"))), Some(Seq("disk")), false),
      ("an empty list", Some(JsArray()), Some(Nil), false),
      // not a list of strings: ignored, as the FPC scheduler ignores it
      ("a string", Some(JsString("gpu")), None, false),
      ("a list with a number", Some(JsArray(JsString("gpu"), JsNumber(1))), None, false),
      ("an object", Some(JsObject("gpu" -> JsNumber(1))), None, false))

    val failures = cases.flatMap {
      case (name, annotation, resources, needsGpu) =>
        val read = GpuRoutingJson.invokerResources(annotation)
        val routed = GpuRouting.requiresGpu("python:3", read, GpuRoutingConfig())
        if (read == resources && routed == needsGpu) Nil
        else Seq(s"FAIL $name: read $read (expected $resources), needs a GPU $routed (expected $needsGpu)")
    }
    failures.foreach(println)
    if (failures.nonEmpty) {
      println(s"GpuRoutingJsonCheck: ${failures.size} of ${cases.size} checks FAILED")
      sys.exit(1)
    }
    println(s"GpuRoutingJsonCheck: all ${cases.size} checks passed")
  }
}
