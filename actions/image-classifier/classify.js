// Classify a photo with the deployed image classifier, through the openwhisk npm client.
//
//   NODE_PATH=.cache/node/node_modules node actions/image-classifier/classify.js photo.jpg [top]
// Prints the action's result as JSON (ACTION_NAME: another deployed classifier).
'use strict'

const fs = require('fs')
const openwhisk = require('openwhisk')

const [file, top] = process.argv.slice(2)
if (!file) {
  console.error('usage: classify.js photo.jpg [top]')
  process.exit(2)
}
const params = { image: fs.readFileSync(file).toString('base64') }
if (top) params.top = Number(top)
openwhisk().actions.invoke({ name: process.env.ACTION_NAME || 'image-classifier', params, blocking: true, result: true })
  .then(
    result => process.stdout.write(JSON.stringify(result) + '\n'),
    err => { console.error(`classify failed: ${err.message}`); process.exit(1) })
