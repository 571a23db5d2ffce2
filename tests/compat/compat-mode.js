// The bender 0.2.1 client library, unchanged, against a node that requires credentials but
// lets old clients (which send no token) register from listed networks ([compat]).
// Usage: node compat-mode.js HOST PORT  (exits non-zero, naming the step, on the first failure)
// HOST is the node's address and this client's own: the test runs both on one machine, on an
// address that is not loopback (loopback is no client's own address).
'use strict';
const assert = require('assert');
const Bender = require('bender-api');

const [host, port] = [process.argv[2], Number(process.argv[3])];
const bender = new Bender({ servers: [{ host, port }] });

function call(method, ...args) {
  return new Promise((resolve) => {
    bender[method](...args, (err, body) => resolve({ err, body }));
  });
}

async function main() {
  // Its own address: registered (and renewed) as before.
  let r = await call('register', { app: 'web', version: '1.0.0', host, port: 8080 });
  assert.ifError(r.err);
  assert.strictEqual(r.body.id, `web/1.0.0/${host}/8080`);
  r = await call('register', { app: 'web', version: '1.0.0', host, port: 8080 });
  assert.ifError(r.err);

  // Another host's address: refused, naming the rule.
  r = await call('register', { app: 'web', version: '1.0.0', host: '10.0.0.9', port: 8080 });
  assert.strictEqual(r.err.statusCode, 403);
  assert.strictEqual(r.err.code, 'FORBIDDEN');
  assert.match(r.err.message, /own-address/);

  // Everything else still needs a token.
  r = await call('createBackend', { name: 'web', app: 'web', version: '1.0.0' });
  assert.strictEqual(r.err.statusCode, 401);
  assert.strictEqual(r.err.code, 'UNAUTHORIZED');
  r = await call('getRegistrations');
  assert.strictEqual(r.err.statusCode, 401);
  console.log('bender-api 0.2.1 in compatibility mode: registration allowed, the rest refused');
}

main().catch((e) => {
  console.error(e.stack || e);
  process.exit(1);
});
