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

import scala.util.Try

import spray.json.DefaultJsonProtocol._
import spray.json.JsValue

/** The one piece of JSON the GPU routing reads; kept apart from [[GpuRouting]] so that this stays plain Scala. */
object GpuRoutingJson {

  /**
   * The value of an action's `invoker-resources` annotation as a list of strings; None when it is absent or is not a
   * list of strings, which the FPC scheduler ignores too (`Parameters.getAs[Seq[String]](...).toOption`).
   */
  def invokerResources(annotation: Option[JsValue]): Option[Seq[String]] =
    annotation.flatMap(value => Try(value.convertTo[Seq[String]]).toOption)
}
