// A static file server for the browser page (README.md): another origin than the Socket.IO
// server's, serving the page and the socket.io-client bundle from this folder.
//
//   node static.js [HOST] [PORT]          (or HOST, PORT from the environment)
//
//   GET /  or  /page.html                  ./page.html
//   GET /socket.io/socket.io.min.js[.map]  node_modules/socket.io-client/dist/..., the same
//                                          file Socket.IO's server serves at that path
//
// Prints {"listening": "HOST:PORT"} once listening, and {"seen": {...}} for each request.

"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");

const host = process.argv[2] || process.env.HOST || "127.0.0.1";
const port = Number(process.argv[3] || process.env.PORT || 0);
const dist = path.join(path.dirname(require.resolve("socket.io-client/package.json")), "dist");

const files = {
  "/": [path.join(__dirname, "page.html"), "text/html; charset=utf-8"],
  "/page.html": [path.join(__dirname, "page.html"), "text/html; charset=utf-8"],
  "/socket.io/socket.io.min.js": [path.join(dist, "socket.io.min.js"), "application/javascript"],
  "/socket.io/socket.io.min.js.map": [path.join(dist, "socket.io.min.js.map"), "application/json"],
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const server = http.createServer((req, res) => {
  const pathname = new URL(req.url, "http://x").pathname;
  emit({
    seen: {
      name: "static",
      method: req.method,
      url: req.url,
      origin: req.headers.origin ?? null,
      sec_fetch_site: req.headers["sec-fetch-site"] ?? null,
      host: req.headers.host ?? null,
    },
  });
  const file = files[pathname];
  if (req.method !== "GET" || !file) {
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
    return;
  }
  res.writeHead(200, { "Content-Type": file[1], "Cache-Control": "no-store" });
  fs.createReadStream(file[0]).pipe(res);
});

server.listen(port, host, () => {
  const addr = server.address();
  const hostPart = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  emit({ listening: `${hostPart}:${addr.port}`, pid: process.pid });
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
