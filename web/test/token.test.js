import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { safeStorage, TOKEN_KEY, TokenKeeper } from '../js/token.js';

class MemoryStorage {
  constructor(entries = {}) { this.map = new Map(Object.entries(entries)); }
  getItem(key) { return this.map.has(key) ? this.map.get(key) : null; }
  setItem(key, value) { this.map.set(key, String(value)); }
  removeItem(key) { this.map.delete(key); }
}

const throwing = {
  getItem() { throw new Error('SecurityError'); },
  setItem() { throw new Error('QuotaExceededError'); },
  removeItem() { throw new Error('SecurityError'); },
};

describe('safeStorage', () => {
  it('never throws when storage is disabled: the value lives as long as the page', () => {
    const store = safeStorage(throwing);
    assert.equal(store.get(TOKEN_KEY), null);
    store.set(TOKEN_KEY, 'x');
    store.set(TOKEN_KEY, null);
    const keeper = new TokenKeeper(store);
    keeper.entered('secret');
    assert.equal(keeper.value, 'secret');
  });

  it('removes a key for null or empty', () => {
    const storage = new MemoryStorage({ [TOKEN_KEY]: 'a' });
    safeStorage(storage).set(TOKEN_KEY, '');
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });
});

describe('TokenKeeper', () => {
  it('takes ?token= out of the URL into storage and keeps the other parameters', () => {
    const storage = new MemoryStorage();
    const keeper = new TokenKeeper(safeStorage(storage));
    assert.equal(keeper.takeFromUrl('?transport=webrtc&token=a%2Bb%20c&relay=1'),
                 '?transport=webrtc&relay=1');
    assert.equal(keeper.value, 'a+b c');
    assert.equal(storage.getItem(TOKEN_KEY), 'a+b c');
    assert.equal(new TokenKeeper(safeStorage(new MemoryStorage())).takeFromUrl('?token=x'), '');
  });

  it('leaves the address bar alone without a token, and starts from the stored one', () => {
    const keeper = new TokenKeeper(safeStorage(new MemoryStorage({ [TOKEN_KEY]: 'kept' })));
    assert.equal(keeper.takeFromUrl('?transport=auto'), null);
    assert.equal(keeper.takeFromUrl(''), null);
    assert.equal(keeper.value, 'kept');
  });

  it('asks for a token to drive when the hello says so, and stops asking when it may drive', () => {
    const keeper = new TokenKeeper(safeStorage(new MemoryStorage()));
    keeper.hello({ token_required: true, can_drive: false });
    assert.equal(keeper.need, 'drive');
    keeper.hello({ token_required: true, can_drive: true });
    assert.equal(keeper.need, null);
    keeper.watchRefused();
    keeper.hello({ token_required: false, can_drive: true });
    assert.equal(keeper.need, null, 'a hello means watching works again');
  });

  it('forgets a refused token once and asks to reconnect once, not per socket', () => {
    const storage = new MemoryStorage({ [TOKEN_KEY]: 'wrong' });
    const keeper = new TokenKeeper(safeStorage(storage));
    assert.equal(keeper.refused({ invalidToken: true }), true);
    assert.equal(keeper.value, '');
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.match(keeper.error, /invalid token/);
    assert.equal(keeper.need, 'drive');
    assert.equal(keeper.refused({ invalidToken: true }), false, 'the second socket');
  });

  it('a socket refused for a missing token asks for one to watch; nothing to forget', () => {
    const keeper = new TokenKeeper(safeStorage(new MemoryStorage()));
    assert.equal(keeper.refused({ invalidToken: false, needsToken: true }), false);
    assert.equal(keeper.need, 'watch');
    assert.equal(keeper.error, null);
  });

  it('a token entered in the form clears the question and the error', () => {
    const keeper = new TokenKeeper(safeStorage(new MemoryStorage({ [TOKEN_KEY]: 'bad' })));
    keeper.refused({ invalidToken: true });
    keeper.entered('good');
    assert.deepEqual([keeper.value, keeper.need, keeper.error], ['good', null, null]);
    keeper.forget();
    assert.equal(keeper.value, '');
  });
});
