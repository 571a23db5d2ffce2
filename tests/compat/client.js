// The bender 0.2.1 client library, unchanged, against a running node.
// Usage: node client.js HOST PORT  (exits non-zero, naming the step, on the first failure)
'use strict';
const assert = require('assert');
const Bender = require('bender-api');

const [host, port] = [process.argv[2], Number(process.argv[3])];
// Two entries for the same node: the client rotates through servers on every request.
const bender = new Bender({ servers: [{ host, port }, { host, port }] });

function call(method, ...args) {
  return new Promise((resolve) => {
    bender[method](...args, (err, body) => resolve({ err, body }));
  });
}

async function main() {
  let r = await call('register', { app: 'web', version: '1.0.0', host: '10.0.0.1', port: 8080 });
  assert.ifError(r.err);
  assert.strictEqual(r.body.id, 'web/1.0.0/10.0.0.1/8080');

  r = await call('getRegistrations', 'web', '1.0.0');
  assert.ifError(r.err);
  assert.strictEqual(r.body.length, 1);
  assert.deepStrictEqual(Object.keys(r.body[0]).sort(),
    ['app', 'host', 'id', 'port', 'registered', 'resource', 'version']);
  assert.strictEqual(r.body[0].resource, 'Registration');
  r = await call('getRegistrations', 'web');
  assert.strictEqual(r.body.length, 1);
  r = await call('getRegistrations');
  assert.strictEqual(r.body.length, 1);

  r = await call('createBackend', { name: 'web', app: 'web', version: '1.0.0', balance: 'leastconn' });
  assert.ifError(r.err);
  assert.strictEqual(r.body.name, 'web');
  r = await call('createBackend', { name: 'web', app: 'web', version: '1.0.0' });
  assert.strictEqual(r.err.code, 'CONFLICT');
  assert.strictEqual(r.err.statusCode, 409);
  r = await call('createBackend', { app: 'web', version: '1.0.0' });
  assert.strictEqual(r.err.code, 'INVALID');
  assert.match(r.err.message, /^bender error \(400\): .*name/);

  // Blue/green the way the old client did it: a partial update.
  r = await call('updateBackend', 'web', { version: '2.0.0' });
  assert.ifError(r.err);
  r = await call('getBackend', { name: 'web' });
  assert.ifError(r.err);
  assert.strictEqual(r.body.version, '2.0.0');
  assert.strictEqual(r.body.balance, 'leastconn', 'a partial update keeps the other fields');
  r = await call('getBackends');
  assert.strictEqual(r.body.length, 1);

  r = await call('createFrontend', { name: 'www', backend: 'web' });
  assert.ifError(r.err);
  r = await call('createFrontend', { backend: 'web' });
  assert.strictEqual(r.err.code, 'INVALID');
  // 0.2.1 took a frontend with only a name (its own client and tests create them that way):
  // no default backend.
  r = await call('createFrontend', { name: 'hello-world' });
  assert.ifError(r.err);
  r = await call('getFrontend', 'hello-world');
  assert.ifError(r.err);
  assert.strictEqual(r.body.name, 'hello-world');
  assert.strictEqual(r.body.backend, undefined);
  r = await call('removeFrontend', 'hello-world');
  assert.ifError(r.err);
  r = await call('getFrontend', 'www');
  assert.strictEqual(r.body.backend, 'web');
  r = await call('getFrontends');
  assert.strictEqual(r.body.length, 1);
  r = await call('removeFrontend', 'www');
  assert.ifError(r.err);
  r = await call('getFrontend', 'www');
  assert.strictEqual(r.err.code, 'NOT_FOUND');
  assert.strictEqual(r.err.message, 'bender error (404): Frontend not found');

  r = await call('removeBackend', { name: 'web' });
  assert.ifError(r.err);
  r = await call('getBackend', 'web');
  assert.strictEqual(r.err.code, 'NOT_FOUND');
  assert.strictEqual(r.err.message, 'bender error (404): Backend not found');
  r = await call('removeBackend', 'web');
  assert.strictEqual(r.err.statusCode, 404);

  // startRegistering renews every 2 s; with the default 4 s TTL the registration stays live.
  const timer = bender.startRegistering({ app: 'sidecar', version: '1', host: '10.0.0.2', port: 9000 });
  await new Promise((ok) => setTimeout(ok, 5000));
  r = await call('getRegistrations', 'sidecar');
  assert.strictEqual(r.body.length, 1, 'still live after more than one TTL of renewals');
  bender.stopRegistering(timer);
  console.log('bender-api 0.2.1: all calls behaved');
}

main().catch((e) => {
  console.error(e.stack || e);
  process.exit(1);
});
