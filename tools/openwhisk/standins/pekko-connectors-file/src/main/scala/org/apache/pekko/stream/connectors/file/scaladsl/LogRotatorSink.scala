// SPDX-License-Identifier: Apache-2.0
// Stand-in for LogRotatorSink of org.apache.pekko:pekko-connectors-file_2.13, which the registry
// reachable here does not serve at any version. OpenWhisk uses it for its file-based activation
// and log stores (ActivationFileStorage, DockerToActivationFileLogStore), neither on the default
// path. Same signature and behaviour: the trigger function is asked for every element whether to
// switch files; each element is written to the current file.
package org.apache.pekko.stream.connectors.file.scaladsl

import java.nio.channels.FileChannel
import java.nio.file.{OpenOption, Path, StandardOpenOption}

import org.apache.pekko.Done
import org.apache.pekko.stream.{Attributes, Inlet, SinkShape}
import org.apache.pekko.stream.scaladsl.Sink
import org.apache.pekko.stream.stage.{GraphStageLogic, GraphStageWithMaterializedValue, InHandler}
import org.apache.pekko.util.ByteString

import scala.concurrent.{Future, Promise}
import scala.jdk.CollectionConverters._

object LogRotatorSink {

  def apply(triggerGeneratorFunction: () => ByteString => Option[Path],
            fileOpenOptions: Set[StandardOpenOption] = Set(StandardOpenOption.APPEND, StandardOpenOption.CREATE))
    : Sink[ByteString, Future[Done]] =
    Sink.fromGraph(new LogRotatorStage(triggerGeneratorFunction, fileOpenOptions))

  private final class LogRotatorStage(triggerGeneratorFunction: () => ByteString => Option[Path],
                                      fileOpenOptions: Set[StandardOpenOption])
      extends GraphStageWithMaterializedValue[SinkShape[ByteString], Future[Done]] {
    private val in = Inlet[ByteString]("LogRotatorSink.in")
    override val shape: SinkShape[ByteString] = SinkShape(in)

    override def createLogicAndMaterializedValue(attributes: Attributes): (GraphStageLogic, Future[Done]) = {
      val done = Promise[Done]()
      val logic = new GraphStageLogic(shape) with InHandler {
        private val trigger = triggerGeneratorFunction()
        private var channel: Option[FileChannel] = None
        private val options: java.util.Set[OpenOption] = (fileOpenOptions ++ Set(StandardOpenOption.WRITE)).map(o => o: OpenOption).asJava

        private def close(): Unit = { channel.foreach(_.close()); channel = None }

        override def preStart(): Unit = pull(in)
        override def onPush(): Unit = {
          val element = grab(in)
          trigger(element).foreach { path =>
            close()
            channel = Some(FileChannel.open(path, options))
          }
          channel match {
            case Some(c) =>
              val buffer = element.asByteBuffer
              while (buffer.hasRemaining) c.write(buffer)
              pull(in)
            case None =>
              failStage(new IllegalStateException("LogRotatorSink: the trigger named no file for the first element"))
          }
        }
        override def onUpstreamFinish(): Unit = { close(); done.trySuccess(Done); completeStage() }
        override def onUpstreamFailure(ex: Throwable): Unit = { close(); done.tryFailure(ex); failStage(ex) }
        override def postStop(): Unit = { close(); done.tryFailure(new IllegalStateException("LogRotatorSink stopped")) }
        setHandler(in, this)
      }
      (logic, done.future)
    }
  }
}
