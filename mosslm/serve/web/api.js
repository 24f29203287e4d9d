// The web chat's talk with the server (docs/web-api.md): JSON routes and the SSE chat stream.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
    this.type = err.type || null;
    this.retryAfter = retryAfter;
  }
}

function retryAfterOf(response, body) {
  const header = response.headers.get('Retry-After');
  const fromHeader = header !== null && /^\d+$/.test(header.trim()) ? parseInt(header, 10) : null;
  const fromBody = body && body.error && Number.isFinite(body.error.retry_after) ? body.error.retry_after : null;
  return fromHeader ?? fromBody;
}

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  return new ApiError(response.status, body, retryAfterOf(response, body));
}

// Every call: same-origin credentials, JSON in and out. `onUnauthorized` is set by the app.
export const api = {
  onUnauthorized: null,

  async request(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET' && method !== 'HEAD') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body ?? {});
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401 && path !== '/api/login' && this.onUnauthorized) this.onUnauthorized(error);
      throw error;
    }
    return response.status === 204 ? null : response.json();
  },

  config() { return this.request('GET', '/api/config'); },
  me() { return this.request('GET', '/api/me'); },
  login(code) { return this.request('POST', '/api/login', { code }); },
  logout() { return this.request('POST', '/api/logout', {}); },
  getSettings() { return this.request('GET', '/api/settings'); },
  putSettings(settings) { return this.request('PUT', '/api/settings', settings); },
  conversations() { return this.request('GET', '/api/conversations'); },
  conversation(id) { return this.request('GET', `/api/conversations/${encodeURIComponent(id)}`); },
  renameConversation(id, title) { return this.request('PATCH', `/api/conversations/${encodeURIComponent(id)}`, { title }); },
  deleteConversation(id) { return this.request('DELETE', `/api/conversations/${encodeURIComponent(id)}`); },
  stop(messageId) { return this.request('POST', `/api/messages/${encodeURIComponent(messageId)}/stop`, {}); },
  feedback(messageId, fb) { return this.request('PUT', `/api/messages/${encodeURIComponent(messageId)}/feedback`, fb); },

  // POST /api/chat and read its text/event-stream. `onEvent(event)` gets each parsed ChatEvent.
  // Resolves with {sawDone} when the stream ends; throws ApiError for a non-2xx answer, and the
  // fetch's own error (TypeError / AbortError) when the network drops or `signal` aborts.
  async chat(request, onEvent, signal) {
    const response = await fetch('/api/chat', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(request),
      signal,
    });
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(error);
      throw error;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder('utf-8');
    let buffer = '';
    let sawDone = false;
    const handleLine = (line) => {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (!line.startsWith('data:')) return; // comments (":"), "event:", "id:", blank separators
      let data = line.slice(5);
      if (data.startsWith(' ')) data = data.slice(1);
      if (data === '' || data === '[DONE]') return;
      let event;
      try { event = JSON.parse(data); } catch (_) { return; }
      if (event && event.type === 'done') sawDone = true;
      onEvent(event);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        handleLine(line);
      }
    }
    buffer += decoder.decode();
    if (buffer) handleLine(buffer);
    return { sawDone };
  },
};
