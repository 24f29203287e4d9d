// The composer and one chat turn: sending, streaming, Stop, regenerate and retry.
import { api, ApiError } from './api.js';
import { $, state, t, addMessage, removeMessage, currentPath, pathTo, localId, loggingOff } from './state.js';
import { hideNotice, showNotice, showError, envelopeError } from './notice.js';
import { renderMessages, updateStreaming } from './messages.js';
import { touchConversation } from './sidebar.js';

// ---------------------------------------------------------------- composer

export function autogrow() {
  const area = $('composer');
  area.style.height = 'auto';
  const borders = area.offsetHeight - area.clientHeight;
  area.style.height = `${Math.min(area.scrollHeight + borders, Math.round(window.innerHeight * 0.4))}px`;
}

// ---------------------------------------------------------------- chatting

function setStreaming(on) {
  $('send').hidden = on;
  $('stop').hidden = !on;
  $('stop').disabled = false;
  $('new-chat').disabled = on;
}

function lastAssistantId() {
  const path = currentPath();
  for (let i = path.length - 1; i >= 0; i--) if (path[i].role === 'assistant' && !path[i]._local) return path[i].id;
  return null;
}

function historyOf(path) {
  const history = [];
  for (let i = 0; i < path.length; i++) {
    if (path[i].role !== 'user') continue;
    const reply = path[i + 1] && path[i + 1].role === 'assistant' ? path[i + 1] : null;
    if (!reply) continue;
    history.push({ user: path[i].content, assistant: { content: reply.content || '', plugin: reply.plugin || null } });
  }
  return history;
}

export function sendFromComposer() {
  const composer = $('composer');
  const text = composer.value;
  if (!text.trim() || state.stream) return;
  composer.value = '';
  autogrow();
  startChat({ content: text, parent_id: lastAssistantId() }, { fromComposer: true });
}

export function regenerate(userMessageId) {
  if (state.stream) return;
  const user = state.messages.get(String(userMessageId));
  if (loggingOff() && user) {
    // Nothing is stored for this user, so the server cannot regenerate: ask the same again.
    startChat({ content: user.content, parent_id: user.parent_id ?? null });
    return;
  }
  startChat({ regenerate: userMessageId });
}

// One /api/chat call: `request` is {content, parent_id} or {regenerate}.
export async function startChat(request, { fromComposer = false } = {}) {
  if (state.stream) return;
  hideNotice();
  state.feedbackOpen = null;
  state.editing = null;
  const body = { conversation_id: state.conv ? state.conv.id : null, parent_id: request.parent_id ?? null };
  if (request.regenerate !== undefined && request.regenerate !== null) {
    body.regenerate = request.regenerate;
    body.parent_id = null;
  } else {
    body.content = request.content;
    body.regenerate = null;
  }
  if (loggingOff()) {
    body.settings = state.settings;
    body.history = historyOf(pathTo(body.parent_id).filter((m) => !m._local));
  }

  // What shows at once: the user's message and an empty reply (replaced at `start`).
  const tmpUser = body.content !== undefined ? { id: localId('tmp-u'), parent_id: body.parent_id, role: 'user', content: body.content, html: null, status: 'complete', _local: true } : null;
  const tmpReply = { id: localId('tmp-a'), parent_id: tmpUser ? tmpUser.id : body.regenerate, role: 'assistant', content: '', html: '', status: 'streaming', plugin: null, feedback: null, _local: true };
  if (tmpUser) addMessage(tmpUser);
  addMessage(tmpReply);

  const stream = {
    controller: new AbortController(), messageId: null, started: false, sawDone: false,
    stopRequested: false, stopTimer: null, preStartError: null, reply: tmpReply,
  };
  state.stream = stream;
  state.stick = true;
  setStreaming(true);
  renderMessages();

  const restoreText = () => {
    if (body.content === undefined) return;
    const composer = $('composer');
    if (!composer.value.trim()) { composer.value = body.content; autogrow(); }
  };
  const dropTemps = () => {
    if (tmpUser) removeMessage(tmpUser.id);
    removeMessage(tmpReply.id);
  };
  const retrySame = () => {
    const composer = $('composer');
    if (body.content !== undefined && composer.value === body.content) { composer.value = ''; autogrow(); }
    startChat(request);
  };

  const onEvent = (event) => {
    if (state.stream !== stream || !event || typeof event !== 'object') return;
    switch (event.type) {
      case 'start': {
        stream.started = true;
        dropTemps();
        if (event.conversation) touchConversation(event.conversation);
        let userId = body.regenerate ?? null;
        if (event.user_message) {
          const user = { ...event.user_message };
          if (user.id === null || user.id === undefined) { user.id = localId('local-u'); user.parent_id = body.parent_id; }
          addMessage(user);
          userId = user.id;
        }
        const replyId = event.message_id ?? localId('local-a');
        stream.messageId = event.message_id ?? null;
        stream.reply = { id: replyId, parent_id: userId, role: 'assistant', content: '', html: '', status: 'streaming', plugin: null, feedback: null };
        addMessage(stream.reply);
        renderMessages();
        if (stream.stopRequested) requestStop();
        break;
      }
      case 'step':
        stream.reply.plugin = event.plugin || stream.reply.plugin;
        updateStreaming(stream.reply, 'step');
        break;
      case 'delta':
        if (stream.reply._blocked) break;
        stream.reply.content = (stream.reply.content || '') + (event.text || '');
        if (typeof event.html === 'string') stream.reply.html = event.html;
        updateStreaming(stream.reply, 'body');
        break;
      case 'blocked': {
        stream.reply._blocked = event.stage === 'input' ? 'input' : 'output';
        stream.reply.content = '';
        stream.reply.html = '';
        updateStreaming(stream.reply, 'body');
        showNotice(t(stream.reply._blocked === 'input' ? 'blocked_input' : 'blocked_output'), { kind: 'warn' });
        break;
      }
      case 'error':
        if (!stream.started) { stream.preStartError = envelopeError(event); break; }
        stream.midError = envelopeError(event);
        break;
      case 'done': {
        stream.sawDone = true;
        const stored = { ...(event.message || {}) };
        const old = stream.reply;
        if (stored.id === null || stored.id === undefined) stored.id = old.id;
        if (old._blocked) { stored._blocked = old._blocked; stored.content = ''; stored.html = ''; }
        if (!stored.status) stored.status = 'complete';
        if (String(stored.id) !== String(old.id)) removeMessage(old.id);
        addMessage(stored);
        stream.reply = stored;
        if (stream.stopRequested) setTimeout(() => stream.controller.abort(), 0);
        break;
      }
      default:
        break;
    }
  };

  let failure = null;
  try {
    await api.chat(body, onEvent, stream.controller.signal);
  } catch (error) {
    failure = error;
  }
  clearTimeout(stream.stopTimer);
  if (state.stream !== stream) return; // logged out meanwhile
  state.stream = null;
  setStreaming(false);

  const aborted = failure && failure.name === 'AbortError';
  if (!stream.started) {
    dropTemps();
    renderMessages();
    const error = stream.preStartError || (aborted ? null : failure);
    if (error instanceof ApiError && error.status === 401) { restoreText(); return; }
    if (stream.stopRequested && (!error || aborted)) { restoreText(); return; }
    if (error) {
      restoreText();
      const blockedInput = error.code === 'moderation_blocked';
      showError(error, blockedInput ? null : retrySame);
    } else if (!stream.sawDone) {
      restoreText();
      showNotice(t('err_network'), { retry: retrySame, kind: 'error' });
    }
    return;
  }

  const reply = stream.reply;
  if (!stream.sawDone) {
    // Stop without `done` within 3 s, or the connection dropped: keep what was written.
    reply.status = stream.stopRequested ? 'stopped' : 'incomplete';
    renderMessages();
    if (!stream.stopRequested) {
      const userId = reply.parent_id;
      if (failure instanceof ApiError && failure.status === 401) return;
      showNotice(t('network_drop'), { retry: userId && !String(userId).startsWith('local') ? () => regenerate(userId) : null, kind: 'error' });
    }
    return;
  }
  renderMessages();
  if (stream.midError && reply.status === 'error') {
    showError(stream.midError, reply.parent_id ? () => regenerate(reply.parent_id) : null);
  }
  if (reply.status === 'incomplete' && !stream.stopRequested && reply.parent_id) {
    showNotice(t('network_drop'), { retry: () => regenerate(reply.parent_id), kind: 'error' });
  }
  if (fromComposer) $('composer').focus();
}

export function requestStop() {
  const stream = state.stream;
  if (!stream) return;
  stream.stopRequested = true;
  $('stop').disabled = true;
  if (stream.messageId !== null && stream.messageId !== undefined && !stream.sentStop) {
    stream.sentStop = true;
    api.stop(stream.messageId).catch(() => { /* the abort below ends it anyway */ });
  }
  // Without a reply id yet, `start` sends the stop; either way the fetch ends within 3 s.
  if (!stream.stopTimer) {
    stream.stopTimer = setTimeout(() => { if (!stream.sawDone) stream.controller.abort(); }, 3000);
  }
}
