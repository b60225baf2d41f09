// SPDX-License-Identifier: Apache-2.0
// Stand-in for io.altoo:pekko-kryo-serialization_2.13 (the registry reachable here serves none of
// its versions): the types OpenWhisk's scheduler compiles against (Scheduler.scala:
// CompatibleKryoInitializer) and the serializer class its application.conf names. See
// PekkoKryoSerializer for what it does at run time.
package io.altoo.serialization.kryo.scala.serializer

import com.esotericsoftware.kryo.kryo5.{ClassResolver, Kryo, ReferenceResolver}

/** The Kryo instance an initializer configures (kryo5, as in the real library). */
class ScalaKryo(classResolver: ClassResolver, referenceResolver: ReferenceResolver)
    extends Kryo(classResolver, referenceResolver)
