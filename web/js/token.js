// The page's access token: where it comes from, where it is kept, what a refusal does to it.
//
// A token arrives in the page URL (?token=..., the link the bridge prints) or through the
// token form. It is kept in sessionStorage (gone when the tab closes), never in the address
// bar: taking it from the URL gives back the URL without it. A refused token is forgotten
// once (the control and the video socket both report the refusal) and the page reconnects
// without it, since watching may not need one. Storage is injected; no DOM here.

export const TOKEN_KEY = 'video_bridge.token';

/** sessionStorage-like access that never throws (storage may be disabled). */
export function safeStorage(storage) {
  return {
    get(key) {
      try { return storage.getItem(key); } catch { return null; }
    },
    set(key, value) {
      try {
        if (value === null || value === '') storage.removeItem(key);
        else storage.setItem(key, value);
      } catch { /* storage disabled: the value lives as long as the page */ }
    },
  };
}

export class TokenKeeper {
  constructor(store) {
    this.store = store;               // safeStorage(...)
    this.value = store.get(TOKEN_KEY) || '';
    this.need = null;                 // null | 'drive' | 'watch': what the user is asked for
    this.error = null;                // a refused token: shown until a new one is entered
  }

  /** Take ?token= out of a location's search; the search string to show instead, or null
   *  when there was none (leave the address bar alone). */
  takeFromUrl(search) {
    const params = new URLSearchParams(search);
    if (!params.has('token')) return null;
    this.set(params.get('token'));
    params.delete('token');
    const rest = params.toString();
    return rest ? `?${rest}` : '';
  }

  set(value) {
    this.value = value;
    this.store.set(TOKEN_KEY, value);
  }

  /** A token typed into the form: kept, and the question and error go away. */
  entered(value) {
    this.set(value);
    this.error = null;
    this.need = null;
  }

  forget() {
    this.set('');
  }

  /** The bridge's hello: ask for a token to drive, or stop asking. */
  hello(hello) {
    if (hello.token_required && !hello.can_drive) this.need = 'drive';
    else if (this.need === 'drive' || this.need === 'watch') this.need = null;
  }

  /** The stream list answered 401: watching needs a token. */
  watchRefused() {
    this.need = 'watch';
  }

  /** A socket closed for its token (meaning from protocol.js closeMeaning). True when the
   *  token was forgotten and the page should reconnect without it (once, not per socket). */
  refused(meaning) {
    if (!meaning.invalidToken) {
      this.need = 'watch';
      return false;
    }
    this.error = 'The bridge refused this token (invalid token). Check it and try again.';
    this.need = this.need ?? 'drive';
    if (!this.value) return false;
    this.forget();
    return true;
  }
}
