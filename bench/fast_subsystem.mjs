// A fast subsystem for bench/routed_proxy.py: Node in front of a demo subsystem.
//
// The demo subsystem is Python under pyvoy and spends about as much CPU per call as
// the gateway does; on a 2-core machine it then leaves the gateway little to work
// with, and "× direct" measures the two Pythons sharing the cores. Issue 12's table
// was taken with a Node subsystem, which answers from one thread and leaves the
// other core free. This is that kind of subsystem: one Node thread, answering
// repeated read calls (GetRun) from memory after asking the demo once, and passing
// every other call (registration probes, listings) to the demo.
//
// Usage: node fast_subsystem.mjs PORT DEMO_URL
// Listens on 127.0.0.1:PORT for h2c (prior knowledge) and HTTP/1.1 alike, as the demo
// does. Built-in modules only: nothing to install.

import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";

const [port, demo] = process.argv.slice(2);
if (!port || !demo) {
  console.error("usage: node fast_subsystem.mjs PORT DEMO_URL");
  process.exit(2);
}
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0");

const CACHED_PATHS = new Set(["/flowwatch.v1.RunService/GetRun"]);
const FORWARDED_HEADERS = ["content-type", "connect-protocol-version", "connect-timeout-ms"];
const cache = new Map(); // path + content type + body -> {status, type, body}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function askDemo(req, body) {
  const headers = {};
  for (const name of FORWARDED_HEADERS) {
    if (req.headers[name] !== undefined) headers[name] = req.headers[name];
  }
  const answer = await fetch(demo + req.url, {
    method: req.method,
    headers,
    body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
  });
  return {
    status: answer.status,
    type: answer.headers.get("content-type") || "application/octet-stream",
    body: Buffer.from(await answer.arrayBuffer()),
  };
}

async function handle(req, res) {
  try {
    const body = await readBody(req);
    const key = CACHED_PATHS.has(req.url)
      ? `${req.url}\n${req.headers["content-type"]}\n${body.toString("base64")}`
      : null;
    let answer = key === null ? undefined : cache.get(key);
    if (answer === undefined) {
      answer = await askDemo(req, body);
      if (key !== null && answer.status === 200) cache.set(key, answer);
    }
    res.writeHead(answer.status, { "content-type": answer.type });
    res.end(answer.body);
  } catch (error) {
    res.writeHead(502, { "content-type": "text/plain" });
    res.end(String(error));
  }
}

// The socket, with the bytes already read from it put back in front.
function replaying(socket, first) {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk, encoding, callback) {
      socket.write(chunk, encoding, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(error, callback) {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  duplex.push(first);
  socket.on("data", (chunk) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("error", (error) => duplex.destroy(error));
  socket.on("close", () => duplex.destroy());
  return duplex;
}

// One port, two protocols: the first bytes of a connection tell h2c from HTTP/1.1.
// http2 reads its socket natively, so bytes put back with unshift() would be lost;
// an h2c connection gets the socket behind a stream that replays them instead.
const h2c = http2.createServer(handle);
const http1 = http.createServer({ keepAlive: true }, handle);
net
  .createServer({ noDelay: true }, (socket) => {
    socket.once("data", (first) => {
      if (first.subarray(0, H2_PREFACE.length).equals(H2_PREFACE)) {
        h2c.emit("connection", replaying(socket, first));
      } else {
        socket.pause();
        socket.unshift(first);
        http1.emit("connection", socket);
        socket.resume();
      }
    });
  })
  .listen(Number(port), "127.0.0.1");
console.log(`fast subsystem: h2c and HTTP/1.1 on :${port}, in front of ${demo}`);

// Stopped by the benchmark with SIGTERM: a clean exit, as its other children make.
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
