// Classify a picture: the CPU preprocess action's result feeds the GPU classifier.
//
//   NODE_PATH=.cache/node/node_modules node actions/image-pipeline/run.js photo.jpg [--logits]
// Prints the classifier's result as JSON.
'use strict'

const fs = require('fs')
const openwhisk = require('openwhisk')

async function classify (file, logits) {
  const ow = openwhisk()
  const image = fs.readFileSync(file).toString('base64')
  const pre = await ow.actions.invoke({ name: 'image-preprocess', params: { image }, blocking: true, result: true })
  if (pre.error) throw new Error(`preprocess: ${pre.error}`)
  return ow.actions.invoke({
    name: 'image-classifier', params: { tensor: pre.tensor, shape: pre.shape, logits }, blocking: true, result: true
  })
}

const [file, flag] = process.argv.slice(2)
if (!file) {
  console.error('usage: run.js photo.jpg [--logits]')
  process.exit(2)
}
classify(file, flag === '--logits').then(
  result => process.stdout.write(JSON.stringify(result) + '\n'),
  err => { console.error(`pipeline failed: ${err.message}`); process.exit(1) })
