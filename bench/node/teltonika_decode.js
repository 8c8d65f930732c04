// Baseline for bench/decode_teltonika.py: decode the same frames with the npm package
// complete-teltonika-parser and print {"records_per_s": ..., "frames_per_s": ...} as JSON.
// Usage: node teltonika_decode.js FRAMES_FILE SECONDS   (FRAMES_FILE: one hex frame per line)
"use strict";
const fs = require("fs");
const { ProtocolParser } = require("complete-teltonika-parser");

const [framesFile, secondsArg] = process.argv.slice(2);
const frames = fs.readFileSync(framesFile, "utf8").split("\n").filter((line) => line.length);
const seconds = Number(secondsArg || "3");

let records = 0;
let decoded = 0;
// Warm up the JIT first, as the Python side warms its caches.
for (let i = 0; i < 200; i++) new ProtocolParser(frames[i % frames.length]);
const started = process.hrtime.bigint();
let elapsed = 0;
while (elapsed < seconds) {
  for (const frame of frames) {
    const parsed = new ProtocolParser(frame);
    records += parsed.Content.AVL_Datas.length;
    decoded += 1;
  }
  elapsed = Number(process.hrtime.bigint() - started) / 1e9;
}
console.log(JSON.stringify({ records_per_s: records / elapsed, frames_per_s: decoded / elapsed }));
