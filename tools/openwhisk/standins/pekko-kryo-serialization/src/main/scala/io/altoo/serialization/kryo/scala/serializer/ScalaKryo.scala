// SPDX-License-Identifier: Apache-2.0
// Stand-in for io.altoo:pekko-kryo-serialization_2.13 (the registry reachable here serves none of
// its versions): the types OpenWhisk's scheduler compiles against (Scheduler.scala:
// CompatibleKryoInitializer) and the serializer class its application.conf names, written here on
// kryo5 (served). Not the real library: a smaller set of Scala serializers (Scala objects and
// ActorRefs; everything else field by field), so every service of a deployment must come from
// this build. See PekkoKryoSerializer.
package io.altoo.serialization.kryo.scala.serializer

import java.lang.reflect.Modifier

import com.esotericsoftware.kryo.kryo5.{ClassResolver, Kryo, ReferenceResolver, Serializer}
import com.esotericsoftware.kryo.kryo5.io.{Input, Output}

import scala.util.Try

/** The Kryo instance an initializer configures; Scala `object`s (None, Nil, case objects) stay singletons. */
class ScalaKryo(classResolver: ClassResolver, referenceResolver: ReferenceResolver)
    extends Kryo(classResolver, referenceResolver) {

  override def getDefaultSerializer(tpe: Class[_]): Serializer[_] =
    if (ScalaKryo.isScalaObject(tpe)) new ScalaObjectSerializer else super.getDefaultSerializer(tpe)
}

object ScalaKryo {
  def isScalaObject(tpe: Class[_]): Boolean =
    tpe.getName.endsWith("$") && Try(tpe.getField("MODULE$")).toOption.exists { field =>
      Modifier.isStatic(field.getModifiers) && field.getType == tpe
    }
}

/** Writes nothing, reads the one instance (`MODULE$`). */
class ScalaObjectSerializer extends Serializer[AnyRef] {
  setImmutable(true)
  override def write(kryo: Kryo, output: Output, obj: AnyRef): Unit = ()
  override def read(kryo: Kryo, input: Input, tpe: Class[_ <: AnyRef]): AnyRef = tpe.getField("MODULE$").get(null)
}
