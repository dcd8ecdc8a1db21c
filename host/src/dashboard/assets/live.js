// The live event stream: GET /api/v1/events/stream read with fetch (it
// needs the bearer header, which EventSource cannot send) and parsed as
// Server-Sent Events here. One stream at a time; it reconnects with
// backoff and resumes with Last-Event-ID.

import { API_BASE } from './api.js';

const MAX_BACKOFF_MS = 10_000;

/**
 * An incremental Server-Sent Events parser (the WHATWG "event stream"
 * interpretation): feed it decoded text, it calls `onMessage` per event.
 */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = '';
    this.data = [];
    this.event = '';
    this.id = null;
    this.pendingCR = false;
  }

  push(text) {
    let chunk = text;
    // A CR at the very end of the previous chunk may pair with an LF here.
    if (this.pendingCR && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.pendingCR = false;
    this.buffer += chunk;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i += 1) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      const line = this.buffer.slice(start, i);
      if (c === '\r') {
        if (i + 1 < this.buffer.length) {
          if (this.buffer[i + 1] === '\n') i += 1;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
      this.line(line);
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return; // a comment (keep-alive)
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
    }
    switch (field) {
      case 'data': this.data.push(value); break;
      case 'event': this.event = value; break;
      case 'id': if (!value.includes('\0')) this.id = value; break;
      default: break; // `retry` and unknown fields: our own backoff applies
    }
  }

  dispatch() {
    if (this.data.length === 0) {
      this.event = '';
      return;
    }
    const message = { id: this.id, event: this.event || 'message', data: this.data.join('\n') };
    this.data = [];
    this.event = '';
    this.onMessage(message);
  }
}

/**
 * The app's live connection. Listeners get `{type, seq, envelope}` for
 * each event, and `{type: 'resync'}` when events may have been missed
 * (also after every reconnection, since the view may be stale).
 */
export class LiveStream {
  constructor({ onUnauthorized, onState } = {}) {
    this.token = null;
    this.scope = null; // a job id, or null for every event
    this.listeners = new Set();
    this.onUnauthorized = onUnauthorized;
    this.onState = onState;
    this.controller = null;
    this.lastEventId = null;
    this.backoff = 1000;
    this.retryTimer = null;
    this.generation = 0;
    this.state = 'connecting';
    this.everConnected = false;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(token) {
    this.token = token;
    this.lastEventId = null;
    this.everConnected = false;
    this.restart();
  }

  stop() {
    this.token = null;
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.setState('connecting');
  }

  /** Narrows the stream to one job's events (or widens it with null). */
  setScope(jobId) {
    const scope = jobId || null;
    if (scope === this.scope) return;
    this.scope = scope;
    // Another scope is another sequence of events: start it afresh; the
    // view loads its state from REST.
    this.lastEventId = null;
    this.everConnected = false;
    if (this.token) this.restart();
  }

  restart() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.backoff = 1000;
    this.connect(this.generation);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (this.onState) this.onState(state);
  }

  emit(event) {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (err) {
        // A broken view must not stop the stream; surface it as a real error.
        setTimeout(() => { throw err; });
      }
    }
  }

  scheduleReconnect(generation) {
    if (generation !== this.generation || !this.token) return;
    this.setState('connecting');
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.retryTimer = setTimeout(() => this.connect(generation), wait);
  }

  async connect(generation) {
    if (generation !== this.generation || !this.token) return;
    const controller = new AbortController();
    this.controller = controller;
    const headers = {
      Authorization: `Bearer ${this.token}`,
      Accept: 'text/event-stream',
    };
    if (this.lastEventId !== null) headers['Last-Event-ID'] = this.lastEventId;
    const url = `${API_BASE}/events/stream${this.scope ? `?job_id=${encodeURIComponent(this.scope)}` : ''}`;
    let response;
    try {
      response = await fetch(url, { headers, signal: controller.signal, cache: 'no-store', credentials: 'omit' });
    } catch {
      if (generation === this.generation) this.scheduleReconnect(generation);
      return;
    }
    if (generation !== this.generation) {
      controller.abort();
      return;
    }
    if (response.status === 401) {
      controller.abort();
      this.setState('connecting');
      if (this.onUnauthorized) this.onUnauthorized();
      return;
    }
    if (!response.ok || !response.body) {
      controller.abort();
      this.scheduleReconnect(generation);
      return;
    }
    this.setState('live');
    this.backoff = 1000;
    // Anything may have happened while we were away.
    if (this.everConnected) this.emit({ type: 'resync', reason: 'reconnected' });
    this.everConnected = true;

    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((message) => this.handle(message, generation));
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (generation !== this.generation) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch {
      // The connection broke or was aborted: handled below.
    }
    try {
      controller.abort();
    } catch {
      // already closed
    }
    if (generation === this.generation) this.scheduleReconnect(generation);
  }

  handle(message, generation) {
    if (generation !== this.generation) return;
    if (message.id !== null && message.id !== '') this.lastEventId = message.id;
    if (message.event === 'resync') {
      this.emit({ type: 'resync', reason: 'server' });
      return;
    }
    // The token was revoked or expired: the server ends the stream, and
    // the reconnection's 401 asks for a new token.
    if (message.event === 'closed') return;
    let envelope = null;
    try {
      envelope = JSON.parse(message.data);
    } catch {
      return; // not an event this dashboard understands
    }
    if (!envelope || typeof envelope !== 'object') return;
    this.emit({
      type: envelope.type ?? message.event,
      seq: envelope.seq ?? Number(message.id),
      envelope,
      payload: envelope.payload ?? {},
    });
  }
}

/** Whether an event concerns the given job. */
export function eventJobId(event) {
  const env = event.envelope ?? {};
  if (event.payload?.job_id) return String(event.payload.job_id);
  if (env.aggregate_type === 'job') return String(env.aggregate_id);
  return null;
}
