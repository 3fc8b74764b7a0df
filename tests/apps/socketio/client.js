// A Socket.IO 4 client (socket.io-client, default settings unless a flag says otherwise),
// used by wsgate's tests to drive server.js directly or through the gateway.
//
//   node client.js URL [--origin ORIGIN] [--host HOSTHEADER]
//                      [--transports polling|websocket|polling,websocket]
//                      [--timeout-ms 10000] [--hold-ms 0] [--fail-fast]
//
// It connects to URL (e.g. http://127.0.0.1:PORT), waits for the server's `hello`, sends an
// `echo` with an acknowledgement, and, when it started on polling and may use websocket,
// waits for engine.io to upgrade the transport to websocket. Then it prints one JSON line
//
//   {"connected": true, "server": NAME, "pid": PID, "transport": "websocket"|"polling",
//    "echo": true, "upgraded": BOOL, "sid": ENGINE_IO_SESSION_ID}
//
// and exits 0; or, when the timeout passes first (or, with --fail-fast, at the first
// connect_error), prints {"connected": false, "error": "...", ...} and exits 1. It also exits
// 1 when it is connected but something expected did not happen (no echo; no upgrade although
// polling and websocket were both allowed); the line then says which, e.g.
// {"connected": true, ..., "upgraded": false, "error": "no upgrade to websocket ..."}.
//
// Node has no browser to add Origin, so --origin and --host are sent as extraHeaders, which
// socket.io-client in Node sends on both transports:
//   - polling (xmlhttprequest-ssl): engine.io-client turns off the library's forbidden-header
//     check when extraHeaders are given, so Origin goes out; but the library always
//     overwrites Host with the URL's, so --host is also set by an http.Agent (below) on
//     every polling request;
//   - websocket (ws): extraHeaders become the upgrade request's headers, Origin and Host
//     included.
//
// --hold-ms keeps the connection open that long after the first echo and then echoes again
// (so a test can hold a session across long-polling cycles, pingInterval 25 s); the result
// then also has "echo_after_hold": true.

"use strict";

const http = require("http");
const https = require("https");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const positional = [];
  const flags = {};
  const booleans = new Set(["fail-fast"]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      if (eq > 0) {
        flags[arg.slice(2, eq)] = arg.slice(eq + 1);
      } else if (booleans.has(arg.slice(2))) {
        flags[arg.slice(2)] = true;
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
const url = positional[0];
if (!url) {
  process.stderr.write(
    "usage: node client.js URL [--origin ORIGIN] [--host HOST] " +
      "[--transports polling|websocket|polling,websocket] [--timeout-ms N] [--hold-ms N] " +
      "[--fail-fast]\n",
  );
  process.exit(2);
}
const timeoutMs = Number(flags["timeout-ms"] || 10000);
const holdMs = Number(flags["hold-ms"] || 0);
const failFast = !!flags["fail-fast"];

const options = {};
if (flags.transports) {
  options.transports = flags.transports.split(",").map((t) => t.trim());
}
const extraHeaders = {};
if (flags.origin) extraHeaders.Origin = flags.origin;
if (flags.host) extraHeaders.Host = flags.host;
if (Object.keys(extraHeaders).length) options.extraHeaders = extraHeaders;
if (flags.host) {
  // xmlhttprequest-ssl sets Host from the URL after the extraHeaders; this agent puts the
  // requested one back before the request's head is written. Without keep-alive, like the
  // `agent: false` xmlhttprequest-ssl uses by default (each polling request on a new
  // connection, "Connection: close").
  const Base = url.startsWith("https:") || url.startsWith("wss:") ? https.Agent : http.Agent;
  class HostAgent extends Base {
    addRequest(req, opts) {
      req.setHeader("Host", flags.host);
      return super.addRequest(req, opts);
    }
  }
  options.agent = new HostAgent({ keepAlive: false });
}
// Whether this client may upgrade from polling to websocket (default transports: yes).
const canUpgrade = !options.transports || options.transports.includes("websocket");
const startsOnPolling = !options.transports || options.transports[0] === "polling";
const expectUpgrade = canUpgrade && startsOnPolling;

const socket = io(url, options);
const engine = () => socket.io.engine;
const result = { connected: false };
let hello = null;
let echoed = false;
let upgraded = false;
let upgradeError = null;
let lastError = null;
let done = false;

function describe(err) {
  if (!err) return null;
  const parts = [err.message || String(err)];
  const d = err.description;
  if (d !== undefined && d !== null) {
    if (typeof d === "number") parts.push(`status ${d}`);
    else if (d.message) parts.push(d.message);
    else if (d.error && d.error.message) parts.push(d.error.message);
    else parts.push(String(d));
  }
  if (typeof d !== "number" && err.context && typeof err.context.status === "number") {
    parts.push(`status ${err.context.status}`);
  }
  return parts.join(": ");
}

function finish(extra) {
  if (done) return;
  done = true;
  clearTimeout(timer);
  const eng = engine();
  const out = Object.assign(result, {
    connected: !!hello,
    server: hello ? hello.name : null,
    pid: hello ? hello.pid : null,
    transport: eng && eng.transport ? eng.transport.name : null,
    echo: echoed,
    upgraded,
    sid: eng ? eng.id || null : null,
  });
  if (upgradeError) out.upgrade_error = upgradeError;
  Object.assign(out, extra || {});
  if (!out.connected && !out.error) out.error = lastError || "timed out";
  process.stdout.write(JSON.stringify(out) + "\n");
  socket.disconnect();
  socket.close();
  const ok = out.connected && out.echo && !out.error;
  // Give the close a moment to go out, then leave even if a request is still pending.
  setTimeout(() => process.exit(ok ? 0 : 1), 100).unref();
  process.exitCode = ok ? 0 : 1;
}

const timer = setTimeout(() => {
  if (!hello) return finish({ error: lastError ? `timed out; last error: ${lastError}` : "timed out" });
  if (!echoed) return finish({ error: "timed out waiting for the echo" });
  if (expectUpgrade && !upgraded) {
    return finish({ error: "no upgrade to websocket before the timeout" });
  }
  finish({ error: "timed out" });
}, timeoutMs + holdMs);

socket.io.on("open", () => {
  const eng = engine();
  eng.on("upgrade", () => {
    upgraded = true;
    maybeDone();
  });
  eng.on("upgradeError", (err) => {
    upgradeError = describe(err);
  });
});

socket.on("connect_error", (err) => {
  lastError = describe(err);
  if (failFast) finish({ error: lastError });
});

socket.on("hello", (payload) => {
  hello = payload;
  socket.timeout(timeoutMs).emit("echo", { n: 1 }, (err, reply) => {
    if (err) return finish({ error: "no echo acknowledgement" });
    echoed = !!(reply && reply.echo && reply.echo.n === 1);
    maybeDone();
  });
});

let holding = false;
function maybeDone() {
  if (done || !hello || !echoed) return;
  if (expectUpgrade && !upgraded) return;
  if (holdMs > 0 && !holding) {
    holding = true;
    setTimeout(() => {
      socket.timeout(timeoutMs).emit("echo", { n: 2 }, (err, reply) => {
        if (err) return finish({ echo_after_hold: false, error: "no echo after the hold" });
        finish({ echo_after_hold: !!(reply && reply.echo && reply.echo.n === 2) });
      });
    }, holdMs);
    return;
  }
  if (!holding) finish();
}
