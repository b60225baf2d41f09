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

const BROKEN = 'def main(args)\n    return {}\n'  // a syntax error: /init fails
const RAISES = 'def main(args):\n    raise RuntimeError("boom")\n'
const SLEEPS = 'import time\n\ndef main(args):\n    time.sleep(5)\n    return {"slept": True}\n'
const V2 = 'def main(args):\n    return {"version": 2, "sum": sum(args.get("values", []))}\n'

async function extra () {
  await ow.actions.create({ name: 'broken', action: BROKEN, kind: 'python:3.11' })
  await timed('initFailure', failure(ow.actions.invoke({ name: 'broken', blocking: true })))
  await ow.actions.create({ name: 'raises', action: RAISES, kind: 'python:3.11' })
  await timed('raises', failure(ow.actions.invoke({ name: 'raises', blocking: true })))
  await ow.actions.create({ name: 'sleeps', action: { exec: { kind: 'python:3.11', code: SLEEPS }, limits: { timeout: 1000 } } })
  await timed('timeout', failure(ow.actions.invoke({ name: 'sleeps', blocking: true })))
  // a sequence across both invokers: the GPU action's result into the CPU action
  await ow.actions.create({ name: 'both', action: { exec: { kind: 'sequence', components: ['/guest/gpu-where', '/guest/cpu-where'] } } })
  await timed('sequence', ow.actions.invoke({ name: 'both', params: { values: [2, 3] }, blocking: true }))
  // a new revision of the CPU action: the scheduler's queue moves to it
  await ow.actions.update({ name: 'cpu-where', action: V2, kind: 'python:3.11' })
  await timed('updated', ow.actions.invoke({ name: 'cpu-where', params: { values: [4, 4] }, blocking: true, result: true }))
  transcript.deleted = await ow.actions.delete({ name: 'cpu-where' })
  transcript.invokeDeleted = await failure(ow.actions.invoke({ name: 'cpu-where', blocking: true }))
}

async function main () {
  const gpuAction = { exec: { kind: 'python:3-gpu', code: WHERE }, annotations: [{ key: 'invoker-resources', value: ['gpu'] }] }
  if (step === 'extra') {
    await extra()
    return
  }
  if (step === 'gpu-async') {
    transcript.gpuAsync = await ow.actions.invoke({ name: 'gpu-where', params: { values: [8, 9] } })
    return
  }
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
