// The plugin's own tests, with Node.js: npm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {{class}} from './{{lib}}.js';

test('counts up from start', () => {
  const driver = new {{class}}({ start: 5 });
  assert.equal(driver.channels()[0].name, 'count');
  assert.deepEqual([1, 2, 3].map(() => driver.poll()[0].value), [5, 6, 7]);
  assert.throws(() => new {{class}}({ start: -1 }), /start/);
});
