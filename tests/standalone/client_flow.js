// Drives standalone mode with the real `openwhisk` npm client and prints a JSON transcript
// of every answer; tests/standalone/test_npm_client.py asserts on it.
//
//   __OW_API_HOST=http://127.0.0.1:PORT __OW_API_KEY=uuid:key node client_flow.js
'use strict'

const openwhisk = require('openwhisk')

const ow = openwhisk({ apihost: process.env.__OW_API_HOST, api_key: process.env.__OW_API_KEY })
const transcript = {}

const HELLO = `
import os

def main(args):
    name = args.get("name", "stranger")
    print(f"hello log line for {name}")
    return {"greeting": f"{args.get('salutation', 'Hello')}, {name}!",
            "action": os.environ.get("__OW_ACTION_NAME")}
`

const HELLO_V2 = `
def main(args):
    return {"greeting": "v2 says hi to " + args.get("name", "nobody")}
`

const GPU = `
def main(args):
    import torch
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        print("no GPU visible to this python:3-gpu action: running on the CPU")
    x = torch.tensor(args["values"], dtype=torch.float64, device=device)
    return {"device": device, "sum": float(x.sum())}
`

// An OpenWhiskError as plain data: the HTTP status and OpenWhisk's error body.
async function failure (promise) {
  try {
    const value = await promise
    return { unexpectedSuccess: value }
  } catch (err) {
    return { statusCode: err.statusCode, error: err.error }
  }
}

async function record (activationId) {
  // Records are written after the ack (as in OpenWhisk): poll until it is there.
  for (let i = 0; i < 200; i++) {
    try {
      return await ow.activations.get({ activationId })
    } catch (err) {
      if (err.statusCode !== 404) throw err
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
  throw new Error(`activation ${activationId} never recorded`)
}

async function main () {
  // The whole action object, as `wsk` sends it: exec, parameters, annotations, limits.
  transcript.create = await ow.actions.create({
    name: 'hello',
    action: {
      exec: { kind: 'python:3', code: HELLO },
      parameters: [{ key: 'salutation', value: 'Hi' }],
      annotations: [{ key: 'description', value: 'a test action' }],
      limits: { timeout: 20000, memory: 128 }
    }
  })
  transcript.get = await ow.actions.get({ name: 'hello' })
  transcript.list = await ow.actions.list()
  transcript.invokeResult = await ow.actions.invoke({ name: 'hello', params: { name: 'Ada' }, blocking: true, result: true })
  transcript.invokeBlocking = await ow.actions.invoke({ name: 'hello', params: { name: 'Grace' }, blocking: true })
  transcript.invokeNonBlocking = await ow.actions.invoke({ name: 'hello', params: { name: 'Alan' } })
  const id = transcript.invokeNonBlocking.activationId
  transcript.activation = await record(id)
  transcript.activationResult = await ow.activations.result({ activationId: id })
  transcript.activationLogs = await ow.activations.logs({ activationId: id })
  transcript.activationList = await ow.activations.list({ name: 'hello', limit: 10 })
  transcript.duplicate = await failure(ow.actions.create({ name: 'hello', action: HELLO, kind: 'python:3' }))
  transcript.update = await ow.actions.update({ name: 'hello', action: HELLO_V2, kind: 'python:3' })
  transcript.invokeUpdated = await ow.actions.invoke({ name: 'hello', params: { name: 'Edsger' }, blocking: true, result: true })

  transcript.gpuCreate = await ow.actions.create({ name: 'gpu-sum', action: GPU, kind: 'python:3-gpu' })
  transcript.gpuInvoke = await ow.actions.invoke({ name: 'gpu-sum', params: { values: [1.5, 2.5, 4] }, blocking: true })
  transcript.gpuLogs = (await record(transcript.gpuInvoke.activationId)).logs

  const stranger = openwhisk({ apihost: process.env.__OW_API_HOST, api_key: '11111111-2222-3333-4444-555555555555:wrongkey' })
  transcript.wrongKey = await failure(stranger.actions.list())
  transcript.unknownAction = await failure(ow.actions.invoke({ name: 'no-such-action', blocking: true }))
  transcript.unknownKind = await failure(ow.actions.create({ name: 'bad-kind', action: HELLO, kind: 'python:2.7-gpu' }))
  transcript.tooLarge = await failure(ow.actions.invoke({ name: 'hello', params: { blob: 'x'.repeat(1100 * 1024) }, blocking: true }))

  transcript.delete = await ow.actions.delete({ name: 'hello' })
  transcript.deleteGpu = await ow.actions.delete({ name: 'gpu-sum' })
  transcript.getDeleted = await failure(ow.actions.get({ name: 'hello' }))
  transcript.listAfter = await ow.actions.list()
}

main().then(
  () => { process.stdout.write(JSON.stringify(transcript)) },
  err => {
    process.stdout.write(JSON.stringify(transcript))
    console.error('flow failed:', err.message, JSON.stringify(err.error || {}))
    process.exit(1)
  })
