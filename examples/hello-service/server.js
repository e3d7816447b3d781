'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { greet } = require('./greet.js');

const read = (file, fallback) => {
  try {
    return fs.readFileSync(path.join(__dirname, file), 'utf8').trim();
  } catch {
    return fallback;
  }
};

function createServer() {
  const version = read('VERSION', '0.0.0');
  const buildInfo = JSON.parse(read('build-info.json', '{}'));
  return http.createServer((req, res) => {
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.url === '/healthz') return send(200, { status: 'ok', version });
    // RELEASE and DEPLOY_ENV come from the pipeline's Deploy stage (a variable the build exported, a pipeline variable).
    if (req.url === '/') return send(200, { service: 'hello-service', version, commit: buildInfo.commit, release: process.env.RELEASE, environment: process.env.DEPLOY_ENV, message: greet('world') });
    return send(404, { error: 'not found' });
  });
}

if (require.main === module) {
  const port = Number(process.env.PORT || 8080);
  const server = createServer();
  server.listen(port, '127.0.0.1', () => console.log(`hello-service listening on ${port}`));
  process.on('SIGTERM', () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}

module.exports = { createServer };
