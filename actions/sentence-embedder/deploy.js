// Deploy (create or update) the sentence embedder with the openwhisk npm client.
//
//   export __OW_API_HOST=http://127.0.0.1:3233 __OW_API_KEY="$(cat .cache/standalone/guest.auth)"
//   NODE_PATH=.cache/node/node_modules node actions/sentence-embedder/deploy.js
'use strict'

const fs = require('fs')
const path = require('path')
const openwhisk = require('openwhisk')

openwhisk().actions.update({
  name: process.env.ACTION_NAME || 'sentence-embedder',
  action: {
    exec: { kind: 'python:3-gpu', code: fs.readFileSync(path.join(__dirname, 'action.py'), 'utf8') },
    annotations: [{ key: 'description', value: 'all-MiniLM-L6-v2 sentence embeddings' }],
    limits: { memory: 512, timeout: 120000 }
  }
}).then(
  action => console.log(`deployed /${action.namespace}/${action.name} ${action.version} (${action.exec.kind})`),
  err => { console.error(`deploy failed: ${err.message}`); process.exit(1) })
