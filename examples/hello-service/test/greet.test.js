'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { greet } = require('../greet.js');

test('greet says hello to the name it is given', () => {
  assert.equal(greet('world'), 'Hello, world!');
});

test('greet keeps unusual names intact', () => {
  assert.equal(greet('$(rm -rf /)'), 'Hello, $(rm -rf /)!');
});
