// Test helpers: fake timers and a fake WebSocket, so the page's state machines run under Node.

export class FakeTimers {
  constructor(start = 1000) {
    this.time = start;
    this.nextId = 1;
    this.tasks = new Map();  // id -> {at, fn, every}
    this.now = () => this.time;
    this.setTimeout = (fn, ms = 0) => this.add(fn, ms, null);
    this.setInterval = (fn, ms = 0) => this.add(fn, ms, Math.max(1, ms));
    this.clearTimeout = (id) => this.tasks.delete(id);
    this.clearInterval = (id) => this.tasks.delete(id);
  }

  add(fn, ms, every) {
    const id = this.nextId++;
    this.tasks.set(id, { at: this.time + Math.max(0, ms), fn, every });
    return id;
  }

  /** Run everything due within the next `ms`, in time order. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let nextId = null;
      let next = null;
      for (const [id, task] of this.tasks) {
        if (task.at <= end && (next === null || task.at < next.at)) {
          next = task;
          nextId = id;
        }
      }
      if (next === null) break;
      this.time = next.at;
      if (next.every === null) this.tasks.delete(nextId);
      else next.at += next.every;
      next.fn();
    }
    this.time = end;
  }
}

export class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedWith = null;
    this.binaryType = 'blob';
    FakeWebSocket.instances.push(this);
  }

  static last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  send(data) {
    this.sent.push(data);
  }

  close(code, reason) {
    this.closedWith = { code, reason };
  }

  // what the server does
  open() {
    this.onopen?.({});
  }

  receive(data) {
    this.onmessage?.({ data: typeof data === 'string' ? data : data });
  }

  receiveJson(obj) {
    this.receive(JSON.stringify(obj));
  }

  serverClose(code, reason = '') {
    this.onclose?.({ code, reason });
  }
}

export function hexToArrayBuffer(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes.buffer;
}
