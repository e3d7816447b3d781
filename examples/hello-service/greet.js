'use strict';

/** The one piece of logic the example's unit tests check. */
function greet(name) {
  return `Hello, ${name}!`;
}

module.exports = { greet };
