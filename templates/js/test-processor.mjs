// The plugin's own tests, with Node.js: npm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Channels, channel, reading } from 'ferrule-sdk';
import {{class}} from './{{lib}}.js';

test('scales floats and keeps the rest', () => {
  const p = new {{class}}({ factor: 2 });
  const table = new Channels([channel('t'), channel('n', 'int')]);
  const out = p.process([reading(0, 1.5), reading(1, 3)], table);
  assert.deepEqual(out.map((r) => r.value), [3, 3]);
  assert.throws(() => new {{class}}({}), /factor/);
});
