// SPDX-License-Identifier: Apache-2.0
// Stand-in: see ScalaKryo.scala.
package io.altoo.serialization.kryo.pekko

import com.esotericsoftware.kryo.kryo5.{Kryo, Serializer => KSerializer}
import com.esotericsoftware.kryo.kryo5.io.{Input, Output}
import com.esotericsoftware.kryo.kryo5.objenesis.strategy.StdInstantiatorStrategy
import com.esotericsoftware.kryo.kryo5.util.{DefaultClassResolver, DefaultInstantiatorStrategy, MapReferenceResolver, Pool}
import io.altoo.serialization.kryo.scala.serializer.ScalaKryo
import org.apache.pekko.actor.{ActorRef, ExtendedActorSystem}
import org.apache.pekko.serialization.{Serialization, Serializer}

import scala.util.Try

/** The Pekko-side initializer that OpenWhisk's CompatibleKryoInitializer extends. */
class DefaultKryoInitializer extends io.altoo.serialization.kryo.scala.DefaultKryoInitializer

/**
 * The serializer OpenWhisk's scheduler configuration binds `CreateQueue`, `CreateQueueResponse` and
 * `ActivationMessage` to (`pekko.actor.serializers.kryo`); the FPC controller sends `CreateQueue`
 * to the scheduler over Pekko remoting with it. Kryo 5 with unregistered classes written by name,
 * references on, objects built without constructors (objenesis), the configured
 * `pekko-kryo-serialization.kryo-initializer` applied (OpenWhisk's sets CompatibleFieldSerializer),
 * Scala objects kept singletons and ActorRefs written as their paths.
 */
class PekkoKryoSerializer(val system: ExtendedActorSystem) extends Serializer {
  override val identifier: Int = 123454323 // the real serializer's id
  override def includeManifest: Boolean = false

  private val initializerClass: String =
    Try(system.settings.config.getString("pekko-kryo-serialization.kryo-initializer"))
      .getOrElse(classOf[DefaultKryoInitializer].getName)

  private val pool = new Pool[ScalaKryo](true, false, 16) {
    override protected def create(): ScalaKryo = newKryo()
  }

  private def newKryo(): ScalaKryo = {
    val kryo = new ScalaKryo(new DefaultClassResolver, new MapReferenceResolver)
    kryo.setRegistrationRequired(false)
    kryo.setReferences(true)
    kryo.setClassLoader(system.dynamicAccess.classLoader)
    kryo.setInstantiatorStrategy(new DefaultInstantiatorStrategy(new StdInstantiatorStrategy))
    val initializer =
      system.dynamicAccess.createInstanceFor[io.altoo.serialization.kryo.scala.DefaultKryoInitializer](initializerClass, Nil).get
    initializer.preInit(kryo)
    kryo.addDefaultSerializer(classOf[ActorRef], new ActorRefSerializer(system))
    initializer.init(kryo)
    initializer.postInit(kryo)
    kryo
  }

  override def toBinary(o: AnyRef): Array[Byte] = {
    val kryo = pool.obtain()
    try {
      val output = new Output(4096, -1)
      kryo.writeClassAndObject(output, o)
      output.toBytes
    } finally pool.free(kryo)
  }

  override def fromBinary(bytes: Array[Byte], manifest: Option[Class[_]]): AnyRef = {
    val kryo = pool.obtain()
    try kryo.readClassAndObject(new Input(bytes))
    finally pool.free(kryo)
  }
}

/** An ActorRef as its serialized path, resolved by the receiving system. */
class ActorRefSerializer(system: ExtendedActorSystem) extends KSerializer[ActorRef] {
  override def write(kryo: Kryo, output: Output, ref: ActorRef): Unit =
    output.writeString(Serialization.serializedActorPath(ref))
  override def read(kryo: Kryo, input: Input, tpe: Class[_ <: ActorRef]): ActorRef =
    system.provider.resolveActorRef(input.readString())
}
