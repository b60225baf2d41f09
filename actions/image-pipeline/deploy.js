// Deploy the pipeline: the CPU preprocess action, the GPU image classifier, and the
// sequence `image-classify` that chains them.
//
//   export __OW_API_HOST=http://127.0.0.1:3233 __OW_API_KEY="$(cat .cache/standalone/guest.auth)"
//   NODE_PATH=.cache/node/node_modules node actions/image-pipeline/deploy.js [onnx|torch]
'use strict'

const fs = require('fs')
const path = require('path')
const { execFileSync } = require('child_process')
const openwhisk = require('openwhisk')

openwhisk().actions.update({
  name: 'image-preprocess',
  action: {
    exec: { kind: 'python:3', code: fs.readFileSync(path.join(__dirname, 'preprocess.py'), 'utf8') },
    annotations: [{ key: 'description', value: 'photo -> normalised 224x224 float32 tensor (CPU)' }],
    limits: { memory: 256, timeout: 60000 }
  }
}).then(
  action => {
    console.log(`deployed /${action.namespace}/${action.name} ${action.version} (${action.exec.kind})`)
    // The GPU half is the image classifier, deployed by its own script.
    execFileSync('node', [path.join(__dirname, '..', 'image-classifier', 'deploy.js'), ...process.argv.slice(2)],
      { stdio: 'inherit' })
    return openwhisk().actions.update({ name: 'image-classify', sequence: ['/_/image-preprocess', '/_/image-classifier'] })
  }).then(
  sequence => console.log(`deployed /${sequence.namespace}/${sequence.name} ${sequence.version} (sequence: ${sequence.exec.components.join(' -> ')})`),
  err => { console.error(`deploy failed: ${err.message}`); process.exit(1) })
