// Runs a TF.js graph model (tensorflowjs_converter output) under Node on the pure-JS CPU
// backend: predictions for a batch of inputs, then the mean batch-1 latency.
//
// Usage: node tfjs_predict.cjs REQUEST.json
// REQUEST.json: {"model_dir": folder with model.json and its weight shards,
//                "inputs": raw little-endian file of the input tensor (row-major),
//                "dtype": "float32" | "int32", "shape": [N, ...],
//                "outputs": file to write the float32 output tensor to (row-major),
//                "latency_examples": how many examples to time one by one (0 = none)}
// Prints one JSON line: {"output_shape": [...], "latency_ms_mean": number | null, "backend": "cpu"}.
// Any failure: one line on stderr, exit status 1.
"use strict";
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const tfconv = require("@tensorflow/tfjs-converter");

function fileHandler(modelDir) {
  // tfjs-core has no file:// loader without tfjs-node; read model.json and its shards here.
  const modelJSON = JSON.parse(fs.readFileSync(path.join(modelDir, "model.json"), "utf8"));
  return {
    load: async () => tf.io.getModelArtifactsForJSON(modelJSON, async (manifest) => {
      const specs = [];
      const buffers = [];
      for (const group of manifest) {
        specs.push(...group.weights);
        for (const p of group.paths) {
          const b = fs.readFileSync(path.join(modelDir, p));
          buffers.push(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
        }
      }
      return [specs, tf.io.concatenateArrayBuffers(buffers)];
    }),
  };
}

async function main() {
  const request = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  await tf.setBackend("cpu");
  const model = await tfconv.loadGraphModel(fileHandler(request.model_dir));
  const raw = fs.readFileSync(request.inputs);
  const Typed = request.dtype === "int32" ? Int32Array : Float32Array;
  const values = new Typed(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  // Predictions in batches of 256 rows (a whole eval split at once can need GBs of activations).
  const rows = request.shape[0];
  const rowSize = values.length / rows;
  const parts = [];
  let outputShape = null;
  for (let start = 0; start < rows; start += 256) {
    const end = Math.min(rows, start + 256);
    const x = tf.tensor(values.slice(start * rowSize, end * rowSize), [end - start, ...request.shape.slice(1)], request.dtype);
    const y = model.predict(x);
    parts.push(await y.data());
    outputShape = [rows, ...y.shape.slice(1)];
    tf.dispose([x, y]);
  }
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) { out.set(p, offset); offset += p.length; }
  fs.writeFileSync(request.outputs, Buffer.from(out.buffer));

  let latency = null;
  const n = Math.min(request.latency_examples || 0, request.shape[0]);
  if (n > 0) {
    const one = (i) => tf.tensor(values.slice(i * rowSize, (i + 1) * rowSize), [1, ...request.shape.slice(1)], request.dtype);
    const warm = one(0);
    tf.dispose([warm, model.predict(warm)]);  // first call compiles kernels: not timed
    let total = 0;
    for (let i = 0; i < n; i++) {
      const xi = one(i);
      const start = process.hrtime.bigint();
      const yi = model.predict(xi);
      await yi.data();
      total += Number(process.hrtime.bigint() - start) / 1e6;
      tf.dispose([xi, yi]);
    }
    latency = total / n;
  }
  process.stdout.write(JSON.stringify({output_shape: outputShape, latency_ms_mean: latency, backend: tf.getBackend()}) + "\n");
}

main().catch((e) => {
  process.stderr.write(`tfjs_predict: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
});
