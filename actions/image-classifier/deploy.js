// Deploy (create or update) the image classifier with the openwhisk npm client.
//
//   export __OW_API_HOST=http://127.0.0.1:3233 __OW_API_KEY="$(cat .cache/standalone/guest.auth)"
//   NODE_PATH=.cache/node/node_modules node actions/image-classifier/deploy.js [onnx|torch]
//
// build.py writes the action's zip and the model file (default engine onnx); ACTION_NAME sets
// the action's name (default image-classifier), PYTHON the interpreter (default python).
'use strict'

const fs = require('fs')
const path = require('path')
const { execFileSync } = require('child_process')
const openwhisk = require('openwhisk')

const engine = process.argv[2] || 'onnx'
if (!['onnx', 'torch'].includes(engine)) {
  console.error(`usage: deploy.js [onnx|torch], not ${engine}`)
  process.exit(2)
}
const built = JSON.parse(execFileSync(process.env.PYTHON || 'python', [path.join(__dirname, 'build.py'), engine],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }))

openwhisk().actions.update({
  name: process.env.ACTION_NAME || 'image-classifier',
  action: {
    exec: { kind: 'python:3-gpu', code: fs.readFileSync(built.zip).toString('base64'), binary: true },
    parameters: [{ key: 'model_path', value: built.model_path }],
    annotations: [{ key: 'description', value: `EfficientNet-Lite0 image classifier (${engine})` }],
    limits: { memory: 512, timeout: 120000 }
  }
}).then(
  action => console.log(`deployed /${action.namespace}/${action.name} ${action.version} (${action.exec.kind}, ${engine}) with ${built.model_path}`),
  err => { console.error(`deploy failed: ${err.message}`); process.exit(1) })
