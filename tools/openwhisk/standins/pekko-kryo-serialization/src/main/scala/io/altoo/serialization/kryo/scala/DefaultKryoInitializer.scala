// SPDX-License-Identifier: Apache-2.0
// Stand-in: see ScalaKryo.scala.
package io.altoo.serialization.kryo.scala

import io.altoo.serialization.kryo.scala.serializer.ScalaKryo

/** The customisation hooks of the real library, in its order: preInit, init, postInit. */
class DefaultKryoInitializer {
  def preInit(kryo: ScalaKryo): Unit = ()
  def init(kryo: ScalaKryo): Unit = ()
  def postInit(kryo: ScalaKryo): Unit = ()
}
