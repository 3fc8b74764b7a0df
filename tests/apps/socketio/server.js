// A Socket.IO 4 server with default settings, used as an upstream in wsgate's tests.
//
//   node server.js [HOST] [PORT] [--name NAME] [--cors-origin ORIGIN[,ORIGIN...]]
//
// HOST, PORT and NAME can also come from the environment (HOST, PORT, NAME); the defaults
// are 127.0.0.1, 0 (a free port) and "server". Everything is written to stdout, one JSON
// object a line:
//
//   {"listening": "127.0.0.1:PORT", "name": NAME, "pid": PID}   once, when listening
//   {"seen": {...}}                                              every HTTP request and
//                                                                WebSocket upgrade received
//   {"answered": {...}}                                          each HTTP response (status,
//                                                                how long it was held)
//   {"connection"|"upgraded"|"disconnect": {...}}                Socket.IO connections
//
// so a test can prove what reached this upstream (and that a denied origin never did).
//
// The Socket.IO server is left at its defaults: path /socket.io/, transports polling and
// websocket, pingInterval 25 s, pingTimeout 20 s, no cookie, no CORS headers, serveClient
// (it serves /socket.io/socket.io.min.js and friends). --cors-origin is off unless given:
// it makes the server answer cross-origin polling with Access-Control-Allow-Origin, which a
// browser page on another origin needs to read polling responses.
//
// Besides Socket.IO, GET /page.html serves ./page.html (see README.md), so the browser page
// can be loaded from this upstream, same-origin with it.

"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const positional = [];
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      if (eq > 0) {
        flags[arg.slice(2, eq)] = arg.slice(eq + 1);
      } else {
        flags[arg.slice(2)] = argv[++i];
      }
    } else {
      positional.push(arg);
    }
  }
  return { positional, flags };
}

const { positional, flags } = parseArgs(process.argv.slice(2));
const host = positional[0] || process.env.HOST || "127.0.0.1";
const port = Number(positional[1] || process.env.PORT || 0);
const name = flags.name || positional[2] || process.env.NAME || "server";
const corsOrigin = flags["cors-origin"] || process.env.CORS_ORIGIN || "";

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const pageFile = path.join(__dirname, "page.html");

// Requests Socket.IO does not claim (engine.io passes them on to the listeners the server
// had before it was attached).
const httpServer = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (req.method === "GET" && url.pathname === "/page.html") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    fs.createReadStream(pageFile).pipe(res);
    return;
  }
  res.writeHead(404, { "Content-Type": "text/plain" });
  res.end("not found\n");
});

const options = {};
if (corsOrigin) {
  options.cors = { origin: corsOrigin === "*" ? "*" : corsOrigin.split(",") };
}
const io = new Server(httpServer, options);

// Recorded before anything else handles them: prepended after Socket.IO attached, so every
// request and every upgrade is seen, whoever answers it.
function record(req, upgrade) {
  const url = new URL(req.url, "http://x");
  const header = (h) => (req.headers[h] === undefined ? null : req.headers[h]);
  const seen = {
    name,
    method: req.method,
    url: req.url,
    path: url.pathname,
    upgrade,
    transport: url.searchParams.get("transport"),
    eio: url.searchParams.get("EIO"),
    sid: url.searchParams.get("sid"),
    origin: header("origin"),
    sec_fetch_site: header("sec-fetch-site"),
    host: header("host"),
    connection: header("connection"),
    content_type: header("content-type"),
    content_length: header("content-length"),
    cookie: header("cookie"),
    user_agent: header("user-agent"),
    remote: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
  };
  emit({ seen });
}

httpServer.prependListener("request", (req, res) => {
  record(req, false);
  // What was answered, and how long it was held: a long-polling GET waits for data or for
  // the next ping (pingInterval, 25 s). Upgrades have no 'finish'; see "connection" and
  // "upgraded" below for them.
  // engine.io passes its headers to writeHead(), which getHeader() does not see afterwards.
  const started = Date.now();
  const written = {};
  const writeHead = res.writeHead;
  res.writeHead = function (status, ...rest) {
    const headers = rest.find((a) => a && typeof a === "object") || {};
    for (const [k, v] of Object.entries(headers)) written[k.toLowerCase()] = v;
    return writeHead.call(this, status, ...rest);
  };
  const sent = (h) => written[h] ?? res.getHeader(h) ?? null;
  res.on("finish", () => {
    emit({
      answered: {
        name,
        method: req.method,
        url: req.url,
        status: res.statusCode,
        content_type: sent("content-type"),
        set_cookie: sent("set-cookie"),
        allow_origin: sent("access-control-allow-origin"),
        held_ms: Date.now() - started,
      },
    });
  });
});
httpServer.prependListener("upgrade", (req) => record(req, true));

io.on("connection", (socket) => {
  const transport = () => socket.conn.transport.name;
  emit({ connection: { name, id: socket.id, transport: transport() } });
  socket.conn.on("upgrade", () => {
    emit({ upgraded: { name, id: socket.id, transport: transport() } });
  });
  socket.emit("hello", { name, pid: process.pid, transport: transport() });
  socket.on("echo", (payload, ack) => {
    if (typeof ack === "function") {
      ack({ name, pid: process.pid, echo: payload, transport: transport() });
    } else {
      socket.emit("echo", payload);
    }
  });
  socket.on("disconnect", (reason) => {
    emit({ disconnect: { name, id: socket.id, reason } });
  });
});

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  const hostPart = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  emit({ listening: `${hostPart}:${addr.port}`, name, pid: process.pid });
});

function shutdown() {
  io.close();
  httpServer.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
