// node-redis 5 (npm `redis`), unmodified and on its defaults, against a real tollgate-server.
//
// Started by crates/tollgate-server/tests/real_clients.rs (`node --test` on this file) with
// the server's RESP address in TOLLGATE_RESP_HOST / TOLLGATE_RESP_PORT; the server runs with
// `--policy api=5/min --semaphore jobs=2`. The `redis` package is loaded from
// TOLLGATE_TEST_NODE_DIR (default: this directory), where scripts/test runs `npm ci`.
//
// node-redis speaks RESP2 by default; `RESP: 3` makes it open with `HELLO 3`. Both run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = process.env.TOLLGATE_TEST_NODE_DIR || dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(dir, 'package.json'));
const { createClient } = require('redis');
const version = require('redis/package.json').version;
const url = `redis://${process.env.TOLLGATE_RESP_HOST || '127.0.0.1'}:${process.env.TOLLGATE_RESP_PORT}`;
const key = () => `node-${randomUUID()}`;

test('this is node-redis 5', () => {
  assert.equal(version.split('.')[0], '5', version);
});

for (const RESP of [undefined, 3]) {
  const name = RESP === undefined ? 'default (RESP2)' : 'RESP3';

  test(`node-redis ${name}`, async () => {
    const options = RESP === undefined ? { url } : { url, RESP };
    const client = createClient(options);
    const errors = [];
    client.on('error', (e) => errors.push(e));
    await client.connect();
    try {
      assert.equal(await client.ping(), 'PONG');
      const info = await client.sendCommand(['CLIENT', 'INFO']);
      assert.match(String(info), new RegExp(`resp=${RESP ?? 2} lib-name=node-redis lib-ver=${version}`));
      assert.equal(await client.clientGetName(), null);

      const k = key();
      assert.deepEqual(await client.sendCommand(['CL.THROTTLE', k, '15', '30', '60']), [0, 16, 15, -1, 2]);
      assert.deepEqual((await client.sendCommand(['TG.CHECK', 'api', k, '5'])).slice(0, 3), [0, 5, 0]);
      assert.equal((await client.sendCommand(['TG.CHECK', 'api', k]))[0], 1);
      assert.equal(await client.sendCommand(['TG.REFUND', 'api', k, '1']), 1);
      assert.deepEqual((await client.sendCommand(['TG.PEEK', 'api', k])).slice(0, 3), [0, 5, 0]);
      const [granted, lease] = await client.sendCommand(['TG.ACQUIRE', 'jobs']);
      assert.equal(granted, 1);
      const left = await client.sendCommand(['TG.EXTEND', 'jobs', String(lease), '60000']);
      assert.ok(left > 59000 && left <= 60000, String(left));
      assert.equal(await client.sendCommand(['TG.RELEASE', 'jobs', String(lease)]), 1);
      assert.equal(await client.sendCommand(['TG.EXTEND', 'jobs', String(lease)]), null);
      await assert.rejects(client.sendCommand(['TG.CHECK', 'nope', k]), /unknown policy/);

      // multi(): MULTI ... EXEC, every reply in order.
      const k2 = key();
      const tx = client.multi();
      for (let i = 0; i < 6; i++) tx.addCommand(['TG.CHECK', 'api', k2]);
      tx.ping();
      const replies = await tx.exec();
      assert.deepEqual(replies.slice(0, 6).map((r) => r[0]), [0, 0, 0, 0, 0, 1]);
      assert.equal(replies[6], 'PONG');
      // A syntax error while queuing aborts the transaction: nothing charged.
      const k3 = key();
      const bad = client.multi().addCommand(['TG.CHECK', 'api', k3, '5']).addCommand(['TG.CHECK', 'api']);
      await assert.rejects(bad.exec(), /EXECABORT|wrong number of arguments/);
      assert.equal((await client.sendCommand(['TG.PEEK', 'api', k3, '5']))[0], 0);
      // A non-transaction pipeline.
      const k4 = key();
      const piped = await client.multi()
        .addCommand(['CL.THROTTLE', k4, '1', '1', '60'])
        .addCommand(['CL.THROTTLE', k4, '1', '1', '60'])
        .addCommand(['CL.THROTTLE', k4, '1', '1', '60'])
        .execAsPipeline();
      assert.deepEqual(piped.map((r) => r[0]), [0, 0, 1]);
    } finally {
      await client.close();
    }
    assert.deepEqual(errors, []);
  });
}
