// SPDX-License-Identifier: Apache-2.0
// Stand-in for FileTailSource of org.apache.pekko:pekko-connectors-file_2.13, which the registry
// reachable here does not serve at any version. OpenWhisk's Scala invoker tails a container's log
// file with it (core/invoker DockerClientWithFileAccess.rawContainerLogs), so it works: the same
// signature and behaviour (read chunks from a position, wait pollingInterval at the end of the
// file, never complete), written here with a plain FileChannel.
package org.apache.pekko.stream.connectors.file.scaladsl

import java.nio.ByteBuffer
import java.nio.channels.FileChannel
import java.nio.file.{Path, StandardOpenOption}

import org.apache.pekko.NotUsed
import org.apache.pekko.stream.{Attributes, Outlet, SourceShape}
import org.apache.pekko.stream.scaladsl.Source
import org.apache.pekko.stream.stage.{GraphStage, GraphStageLogic, OutHandler, TimerGraphStageLogic}
import org.apache.pekko.util.ByteString

import scala.concurrent.duration.FiniteDuration

object FileTailSource {

  /** Emits the bytes of `path` from `startingPosition` on, at most `maxChunkSize` a chunk; polls for more every `pollingInterval`. */
  def apply(path: Path, maxChunkSize: Int, startingPosition: Long, pollingInterval: FiniteDuration): Source[ByteString, NotUsed] =
    Source.fromGraph(new FileTailStage(path, maxChunkSize, startingPosition, pollingInterval))

  private final class FileTailStage(path: Path, maxChunkSize: Int, startingPosition: Long, pollingInterval: FiniteDuration)
      extends GraphStage[SourceShape[ByteString]] {
    require(maxChunkSize > 0, "maxChunkSize must be positive")
    private val out = Outlet[ByteString]("FileTailSource.out")
    override val shape: SourceShape[ByteString] = SourceShape(out)

    override def createLogic(attributes: Attributes): GraphStageLogic =
      new TimerGraphStageLogic(shape) with OutHandler {
        private var channel: FileChannel = _
        private var position = startingPosition
        private val buffer = ByteBuffer.allocate(maxChunkSize)

        override def preStart(): Unit = channel = FileChannel.open(path, StandardOpenOption.READ)
        override def postStop(): Unit = if (channel != null) channel.close()

        private def readChunk(): Unit = {
          buffer.clear()
          val n = channel.read(buffer, position)
          if (n > 0) {
            position += n
            buffer.flip()
            push(out, ByteString.fromByteBuffer(buffer))
          } else scheduleOnce("poll", pollingInterval)
        }

        override def onPull(): Unit = readChunk()
        override protected def onTimer(timerKey: Any): Unit = if (isAvailable(out)) readChunk()
        setHandler(out, this)
      }
  }
}
