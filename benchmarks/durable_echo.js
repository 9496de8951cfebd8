'use strict';
/* The durable floor: the yardstick's echo service (answers each call on ca/+/in with a reply on the session topic,
 * QoS 1) that replies only after a record of the call is on disk. Each record (topic, request id, counter) is
 * written and flushed the way the bridge's redo log does it (bridge/store/redo.py): appended to a file preallocated
 * with zeros, in the 4 KiB blocks it spans, around the page cache where O_DIRECT works, then fdatasync. The calls
 * that arrive in one turn of Node's loop share one write and one flush (group commit). No state machine, sessions,
 * deduplication or recovery: what any server pays for "durable before the reply", in a lean runtime.
 * env: PORT (1883), LOG (file; durable-echo.log in the working directory), DIRECT (1; 0: through the page cache).
 * Used by benchmarks/floor.py; needs the yardstick's node modules (mqtt, cbor-x) on NODE_PATH.
 */
const fs = require('fs');
const zlib = require('zlib');
const mqtt = require('mqtt');
const { encode, decode } = require('cbor-x');

const BLOCK = 4096;
const FILE_BYTES = 2 << 20; // written full of zeros once; records wrap to the start (nothing reads them back)
const path = process.env.LOG || 'durable-echo.log';
const fd = fs.openSync(path, 'w+');
fs.writeSync(fd, Buffer.alloc(FILE_BYTES), 0, FILE_BYTES, 0);
fs.fsyncSync(fd);

// A direct write needs a buffer aligned to the disk's block size: Node gives no addresses, so find an offset into a
// larger buffer at which the kernel takes one.
const pool = Buffer.alloc(2 * BLOCK + 64 * 1024);
let out = null; // the aligned window of pool the blocks are written from
let wfd = fd;
if (process.env.DIRECT !== '0' && fs.constants.O_DIRECT) {
  const dfd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  for (let at = 0; at < BLOCK && out === null; at += 16) {
    try {
      fs.writeSync(dfd, pool, at, BLOCK, 0);
      out = pool.subarray(at, at + BLOCK + 64 * 1024);
    } catch (e) {
      if (e.code !== 'EINVAL') throw e;
    }
  }
  if (out === null) fs.closeSync(dfd); else wfd = dfd;
}
if (out === null) out = pool;
const how = out === pool ? 'through the page cache' : 'O_DIRECT';

let offset = 0; // where the next record starts in the file
let kept = 0; // bytes of earlier records at the start of out: the head of the block the next record starts in
let seq = 0;
let n = 0;
let pending = [];

const head = Buffer.alloc(16);
function flush() {
  const batch = pending;
  pending = [];
  const payload = encode(batch.map((m) => [m.topic, m.id, m.n]));
  const len = 16 + payload.length;
  if (offset + len > FILE_BYTES) { offset = 0; kept = 0; }
  head.writeUInt32LE(payload.length, 4);
  head.writeBigUInt64LE(BigInt(++seq), 8);
  head.writeUInt32LE(zlib.crc32 ? zlib.crc32(payload, zlib.crc32(head.subarray(4))) : 0, 0);
  head.copy(out, kept);
  payload.copy(out, kept + 16);
  const end = kept + len;
  const size = Math.ceil(end / BLOCK) * BLOCK;
  if (size > out.length) throw new Error('record larger than the buffer');
  out.fill(0, end, size);
  const at = offset - kept;
  fs.writeSync(wfd, out, 0, size, at);
  fs.fdatasyncSync(wfd);
  offset += len;
  const last = end - (end % BLOCK); // the next record starts in the block this one ends in
  out.copy(out, 0, last, end);
  kept = end - last;
  for (const m of batch) {
    c.publish(m.reply, encode({ t: 'reply', id: m.id, ok: m.n }), { qos: 1 });
  }
}

const c = mqtt.connect({ host: '127.0.0.1', port: parseInt(process.env.PORT || '1883'), clientId: 'durable-echo-' + process.pid,
                         clean: true, keepalive: 60, protocolVersion: 4 });
c.on('connect', () => { if (c.stream && c.stream.setNoDelay) c.stream.setNoDelay(true); });
c.on('connect', () => c.subscribe('ca/+/in', { qos: 1 }, () => console.log(`durable echo ready: ${how} writes, fdatasync, to ${path}`)));
c.on('message', (topic, payload) => {
  const m = decode(payload);
  const ca = topic.split('/')[1];
  if (!pending.length) setImmediate(flush);
  pending.push({ topic, id: m.id, n: ++n, reply: `ca/${ca}/session/${m.session || 'default'}` });
});
