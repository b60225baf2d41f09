// Deploy (create or update) the image classifier with the openwhisk npm client.
//
//   python actions/image-classifier/export_model.py            # once: writes the ONNX file
//   export __OW_API_HOST=http://127.0.0.1:3233 __OW_API_KEY="$(cat .cache/standalone/guest.auth)"
//   NODE_PATH=.cache/node/node_modules node actions/image-classifier/deploy.js [model.onnx]
'use strict'

const fs = require('fs')
const path = require('path')
const openwhisk = require('openwhisk')

const modelPath = path.resolve(process.argv[2] || process.env.MODEL_PATH || '.cache/models/resnet50-seed0.onnx')
if (!fs.existsSync(modelPath)) {
  console.error(`no model at ${modelPath}: run python actions/image-classifier/export_model.py first`)
  process.exit(1)
}

openwhisk().actions.update({
  name: process.env.ACTION_NAME || 'image-classifier',
  action: {
    exec: { kind: 'python:3-gpu', code: fs.readFileSync(path.join(__dirname, 'action.py'), 'utf8') },
    parameters: [{ key: 'model_path', value: modelPath }],
    annotations: [{ key: 'description', value: 'ResNet-50 (ONNX) image classifier' }],
    limits: { memory: 512, timeout: 120000 }
  }
}).then(
  action => console.log(`deployed /${action.namespace}/${action.name} ${action.version} (${action.exec.kind}) with ${modelPath}`),
  err => { console.error(`deploy failed: ${err.message}`); process.exit(1) })
