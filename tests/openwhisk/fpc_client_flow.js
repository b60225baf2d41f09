// Drives OpenWhisk's own controller (FPC mode) with the real `openwhisk` npm client: a GPU-tagged
// action and a CPU action, activation get/result/logs/list, an error result. Prints a JSON
// transcript of every answer; tests/openwhisk/test_openwhisk_services.py asserts on it.
//
//   __OW_API_HOST=http://127.0.0.1:PORT __OW_API_KEY=uuid:key node fpc_client_flow.js [step]
//   step: all (default), gpu-only (one GPU invoke, for the restart check)
'use strict'

const openwhisk = require('openwhisk')

const ow = openwhisk({ apihost: process.env.__OW_API_HOST, api_key: process.env.__OW_API_KEY })
const transcript = {}
const step = process.argv[2] || 'all'

// Which node ran it: the GPU invoker exposes its declared GPU to its containers.
const WHERE = `
import os

def main(args):
    print(f"log line from {os.environ.get('__OW_ACTION_NAME')}")
    if args.get("fail"):
        return {"error": "asked to fail"}
    return {"action": os.environ.get("__OW_ACTION_NAME"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "sum": sum(args.get("values", []))}
`

async function failure (promise) {
  try {
    const value = await promise
    return { unexpectedSuccess: value }
  } catch (err) {
    return { statusCode: err.statusCode, error: err.error }
  }
}

async function record (activationId) {
  for (let i = 0; i < 300; i++) {
    try {
      return await ow.activations.get({ activationId })
    } catch (err) {
      if (err.statusCode !== 404) throw err
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }
  throw new Error(`activation ${activationId} never recorded`)
}

async function timed (key, promise) {
  const start = Date.now()
  transcript[key] = await promise
  transcript[key + 'Ms'] = Date.now() - start
}

async function main () {
  const gpuAction = { exec: { kind: 'python:3-gpu', code: WHERE }, annotations: [{ key: 'invoker-resources', value: ['gpu'] }] }
  if (step === 'gpu-only') {
    const existing = await failure(ow.actions.get({ name: 'gpu-where' }))
    if (existing.statusCode === 404) await ow.actions.create({ name: 'gpu-where', action: gpuAction })
    await timed('gpuInvoke', ow.actions.invoke({ name: 'gpu-where', params: { values: [3, 4] }, blocking: true }))
    return
  }
  transcript.gpuCreate = await ow.actions.create({
    name: 'gpu-where',
    action: gpuAction
  })
  transcript.cpuCreate = await ow.actions.create({ name: 'cpu-where', action: WHERE, kind: 'python:3.11' })
  await timed('gpuInvoke', ow.actions.invoke({ name: 'gpu-where', params: { values: [1, 2] }, blocking: true }))
  await timed('cpuInvoke', ow.actions.invoke({ name: 'cpu-where', params: { values: [5, 6] }, blocking: true }))
  await timed('gpuInvokeWarm', ow.actions.invoke({ name: 'gpu-where', params: { values: [1, 2, 3] }, blocking: true, result: true }))
  await timed('cpuInvokeWarm', ow.actions.invoke({ name: 'cpu-where', params: { values: [7] }, blocking: true, result: true }))
  transcript.nonBlocking = await ow.actions.invoke({ name: 'cpu-where', params: { values: [10] } })
  const id = transcript.nonBlocking.activationId
  transcript.activation = await record(id)
  transcript.activationResult = await ow.activations.result({ activationId: id })
  transcript.activationLogs = await ow.activations.logs({ activationId: id })
  // The list is a view query: pouchdb-server may answer it before the record is indexed.
  for (let i = 0; i < 50; i++) {
    transcript.activationList = await ow.activations.list({ limit: 20 })
    transcript.activationListTries = i + 1
    if (transcript.activationList.some(a => a.activationId === id)) break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  transcript.errorResult = await failure(ow.actions.invoke({ name: 'cpu-where', params: { fail: true }, blocking: true }))
}

main().then(
  () => { process.stdout.write(JSON.stringify(transcript)) },
  err => {
    process.stdout.write(JSON.stringify(transcript))
    console.error('flow failed:', err.message, JSON.stringify(err.error || {}))
    process.exit(1)
  })
