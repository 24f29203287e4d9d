// The web chat: screens, conversation tree, streaming, feedback, settings. See docs/web-api.md.
import { api, ApiError } from './api.js';
import { el, pluginStep, setReplyHtml } from './render.js';

const $ = (id) => document.getElementById(id);
const LANG_KEY = 'mosslm.lang';
const ROOT = '\u0000root';

const state = {
  lang: 'en',
  strings: { zh: {}, en: {} },
  config: null,
  me: null,
  settings: null,
  conversations: [],
  conv: null,            // {id, title, ...} or null for a new chat
  messages: new Map(),   // id -> Message (plus local fields _blocked, _local)
  order: [],             // ids in creation order
  chosen: new Map(),     // parent key -> the child shown
  stream: null,          // the reply being streamed
  openSteps: new Set(),  // message ids whose plugin step is open
  feedbackOpen: null,    // message id whose feedback form is open
  editing: null,         // user message id being edited
  stick: true,           // follow the stream unless the person scrolled up
  retry: null,           // what the notice's retry button does
  noticeTimer: null,
  localSeq: 0,
};

// ---------------------------------------------------------------- language

function t(key, vars) {
  const table = state.strings[state.lang] || {};
  let text = table[key] ?? state.strings.en[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) text = text.split(`{${k}}`).join(String(v));
  return text;
}
t.has = (key) => key in (state.strings[state.lang] || {}) || key in state.strings.en;

function initialLang() {
  const stored = localStorage.getItem(LANG_KEY);
  if (stored === 'zh' || stored === 'en') return stored;
  const nav = (navigator.languages && navigator.languages[0]) || navigator.language || 'en';
  return /^zh/i.test(nav) ? 'zh' : 'en';
}

function applyLang() {
  document.documentElement.lang = state.lang === 'zh' ? 'zh-CN' : 'en';
  document.title = t('product');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-placeholder]')) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of document.querySelectorAll('[data-i18n-aria]')) node.setAttribute('aria-label', t(node.dataset.i18nAria));
  for (const node of document.querySelectorAll('[data-i18n-title]')) node.title = t(node.dataset.i18nTitle);
  if (state.me) {
    renderConversations();
    renderMessages();
    renderHeader();
    if (!$('settings-panel').hidden) fillSettings();
  }
}

function toggleLang() {
  state.lang = state.lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem(LANG_KEY, state.lang);
  applyLang();
}

// ---------------------------------------------------------------- screens

function showLogin(messageKey) {
  $('app').hidden = true;
  $('login').hidden = false;
  const error = $('login-error');
  if (messageKey) { error.textContent = t(messageKey); error.hidden = false; } else { error.hidden = true; }
  $('login-submit').disabled = false;
  $('login-code').value = '';
  $('login-code').focus();
}

async function enterApp(me) {
  state.me = me;
  state.config = { ...(state.config || {}), ...pickConfig(me) };
  state.settings = me.settings || (state.config && state.config.defaults) || {};
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = me.user && me.user.name ? String(me.user.name) : '';
  $('logging-off').hidden = !(me.user && me.user.logging === false);
  $('logout').hidden = state.config.auth === 'none';
  renderHeader();
  renderMessages();
  await loadConversations();
  $('composer').focus();
  autogrow();
}

function pickConfig(me) {
  const out = {};
  for (const key of ['model', 'auth', 'plugins', 'defaults', 'moderation']) if (key in me) out[key] = me[key];
  return out;
}

function renderHeader() {
  $('conv-title').textContent = state.conv ? (state.conv.title || t('untitled')) : t('new_chat');
  $('model-name').textContent = state.config && state.config.model ? t('model', { model: state.config.model }) : '';
}

function sessionExpired() {
  if (state.stream) { try { state.stream.controller.abort(); } catch (_) { /* already ended */ } }
  if (!state.me || state.config?.auth === 'none') return;
  state.me = null;
  showLogin('err_login_required');
}

// ---------------------------------------------------------------- conversations (sidebar)

async function loadConversations() {
  try {
    const answer = await api.conversations();
    state.conversations = answer.data || [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
    return;
  }
  renderConversations();
}

function renderConversations() {
  const list = $('conv-list');
  list.replaceChildren();
  $('conv-empty').hidden = state.conversations.length > 0;
  for (const conv of state.conversations) {
    const current = state.conv && state.conv.id === conv.id;
    const title = conv.title || t('untitled');
    const open = el('button', {
      type: 'button', class: 'conv-open ellipsis', testid: 'conversation-item', title,
      'aria-current': current ? 'page' : null, text: title,
    });
    open.addEventListener('click', () => openConversation(conv.id));
    const rename = el('button', { type: 'button', class: 'icon tiny', 'aria-label': `${t('rename')}: ${title}`, title: t('rename'), 'data-icon': '✎' });
    rename.addEventListener('click', () => startRename(item, conv));
    const remove = el('button', { type: 'button', class: 'icon tiny', 'aria-label': `${t('delete')}: ${title}`, title: t('delete'), 'data-svg': 'trash' });
    remove.addEventListener('click', () => deleteConversation(conv));
    const item = el('li', { class: 'conv' + (current ? ' current' : '') }, open, el('span', { class: 'conv-tools' }, rename, remove));
    list.append(item);
  }
}

function startRename(item, conv) {
  const input = el('input', { type: 'text', class: 'rename-input', 'aria-label': t('rename_label'), maxlength: 200 });
  input.value = conv.title || '';
  item.replaceChildren(input);
  input.focus();
  input.select();
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    if (save && title && title !== conv.title) {
      try {
        const updated = await api.renameConversation(conv.id, title);
        Object.assign(conv, updated);
        if (state.conv && state.conv.id === conv.id) Object.assign(state.conv, updated);
      } catch (error) { showError(error); }
    }
    renderConversations();
    renderHeader();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.isComposing) { e.preventDefault(); finish(true); }
    if (e.key === 'Escape') { e.preventDefault(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
}

async function deleteConversation(conv) {
  if (!window.confirm(t('confirm_delete', { title: conv.title || t('untitled') }))) return;
  try {
    await api.deleteConversation(conv.id);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) { showError(error); return; }
  }
  state.conversations = state.conversations.filter((c) => c.id !== conv.id);
  if (state.conv && state.conv.id === conv.id) newChat();
  renderConversations();
}

function resetConversation() {
  state.conv = null;
  state.messages = new Map();
  state.order = [];
  state.chosen = new Map();
  state.openSteps = new Set();
  state.feedbackOpen = null;
  state.editing = null;
}

function newChat() {
  if (state.stream) return;
  resetConversation();
  hideNotice();
  renderHeader();
  renderMessages();
  renderConversations();
  closeSidebar();
  $('composer').focus();
}

async function openConversation(id) {
  if (state.stream) return;
  let conv;
  try {
    conv = await api.conversation(id);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
    if (error instanceof ApiError && error.status === 404) loadConversations();
    return;
  }
  resetConversation();
  hideNotice();
  const { messages = [], ...meta } = conv;
  state.conv = meta;
  for (const message of messages) addMessage(message, false);
  renderHeader();
  renderConversations();
  state.stick = true;
  renderMessages();
  scrollToEnd(true);
  closeSidebar();
}

function touchConversation(conv) {
  if (!conv || conv.id === null || conv.id === undefined) return;
  state.conv = { ...(state.conv || {}), ...conv };
  state.conversations = [state.conv, ...state.conversations.filter((c) => c.id !== conv.id)];
  renderConversations();
  renderHeader();
}

// ---------------------------------------------------------------- the message tree

const keyOf = (parentId) => (parentId === null || parentId === undefined ? ROOT : String(parentId));

function addMessage(message, choose = true) {
  const id = String(message.id);
  if (!state.messages.has(id)) state.order.push(id);
  state.messages.set(id, message);
  if (choose) state.chosen.set(keyOf(message.parent_id), id);
}

function removeMessage(id) {
  id = String(id);
  const message = state.messages.get(id);
  state.messages.delete(id);
  state.order = state.order.filter((x) => x !== id);
  if (message && state.chosen.get(keyOf(message.parent_id)) === id) state.chosen.delete(keyOf(message.parent_id));
}

function childrenOf(key) {
  return state.order.filter((id) => keyOf(state.messages.get(id).parent_id) === key);
}

function currentPath() {
  const path = [];
  let key = ROOT;
  for (let guard = 0; guard < 10000; guard++) {
    const children = childrenOf(key);
    if (!children.length) break;
    let pick = state.chosen.get(key);
    if (!children.includes(pick)) pick = children[children.length - 1];
    const message = state.messages.get(pick);
    path.push(message);
    key = String(message.id);
  }
  return path;
}

// ---------------------------------------------------------------- rendering messages

function renderMessages() {
  const list = $('messages');
  const path = currentPath();
  list.replaceChildren();
  $('empty').hidden = path.length > 0 || !!state.stream;
  const lastUser = [...path].reverse().find((m) => m.role === 'user');
  for (const message of path) {
    list.append(message.role === 'user' ? userNode(message, lastUser === message) : assistantNode(message));
  }
  scrollToEnd();
}

function branchSwitcher(message) {
  const key = keyOf(message.parent_id);
  const siblings = childrenOf(key);
  if (siblings.length < 2) return null;
  const index = siblings.indexOf(String(message.id));
  const busy = !!state.stream;
  const prev = el('button', { type: 'button', class: 'icon tiny', testid: 'branch-prev', 'aria-label': t('branch_prev'), title: t('branch_prev'), 'data-icon': '‹', disabled: busy || index <= 0 });
  const next = el('button', { type: 'button', class: 'icon tiny', testid: 'branch-next', 'aria-label': t('branch_next'), title: t('branch_next'), 'data-icon': '›', disabled: busy || index >= siblings.length - 1 });
  prev.addEventListener('click', () => { state.chosen.set(key, siblings[index - 1]); state.feedbackOpen = null; renderMessages(); });
  next.addEventListener('click', () => { state.chosen.set(key, siblings[index + 1]); state.feedbackOpen = null; renderMessages(); });
  return el('span', { class: 'branches', role: 'group', 'aria-label': t('branch') },
    prev, el('span', { class: 'branch-label', testid: 'branch-label', text: `${index + 1}/${siblings.length}` }), next);
}

function userNode(message, isLast) {
  const li = el('li', { class: 'message user', testid: 'message-user', 'data-message-id': message.id });
  if (state.editing === String(message.id)) {
    const area = el('textarea', { class: 'edit-area', 'aria-label': t('edit_label'), rows: 3 });
    area.value = message.content || '';
    const save = el('button', { type: 'button', class: 'primary small', text: t('edit_send') });
    const cancel = el('button', { type: 'button', class: 'small', text: t('cancel') });
    save.addEventListener('click', () => {
      const text = area.value;
      if (!text.trim()) return;
      state.editing = null;
      startChat({ content: text, parent_id: message.parent_id ?? null });
    });
    cancel.addEventListener('click', () => { state.editing = null; renderMessages(); });
    area.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); save.click(); }
      if (e.key === 'Escape') { e.preventDefault(); cancel.click(); }
    });
    li.append(el('div', { class: 'bubble editing' }, area, el('div', { class: 'edit-buttons' }, cancel, save)));
    queueMicrotask(() => { area.focus(); area.setSelectionRange(area.value.length, area.value.length); });
    return li;
  }
  li.append(el('div', { class: 'bubble', text: message.content ?? '' }));
  const tools = el('div', { class: 'actions user-actions' });
  const switcher = branchSwitcher(message);
  if (switcher) tools.append(switcher);
  if (isLast && !state.stream && !message._local) {
    const edit = el('button', { type: 'button', class: 'icon tiny', testid: 'edit-last', 'aria-label': t('edit_label'), title: t('edit_label'), 'data-icon': '✎' });
    edit.addEventListener('click', () => { state.editing = String(message.id); state.feedbackOpen = null; renderMessages(); });
    tools.append(edit);
  }
  if (tools.childElementCount) li.append(tools);
  return li;
}

function assistantNode(message) {
  const id = String(message.id);
  const status = message.status || 'complete';
  const li = el('li', { class: `message assistant status-${status}`, testid: 'message-assistant', 'data-status': status, 'data-message-id': message.id });
  const content = el('div', { class: 'content' });
  li.append(el('div', { class: 'avatar', 'aria-hidden': 'true', text: 'M' }), content);
  content.append(stepNode(message) || el('span', { class: 'step-slot', hidden: true }));
  const body = el('div', { class: 'assistant-body markdown', testid: 'assistant-body' });
  fillBody(body, message);
  content.append(body);
  const note = statusNote(message);
  if (note) content.append(note);
  if (status !== 'streaming') content.append(actionsOf(message));
  if (state.feedbackOpen === id) content.append(feedbackForm(message));
  return li;
}

function stepNode(message) {
  const plugin = message.plugin;
  if (!plugin) return null;
  const has = ['thoughts', 'commands', 'results'].some((k) => plugin[k] && String(plugin[k]).trim() && String(plugin[k]).trim() !== 'None') ||
    (plugin.calls && plugin.calls.length) || (plugin.sources && plugin.sources.length);
  if (!has) return null;
  const id = String(message.id);
  const details = pluginStep(plugin, t, message.status === 'streaming', state.openSteps.has(id));
  details.addEventListener('toggle', () => { if (details.open) state.openSteps.add(id); else state.openSteps.delete(id); });
  return details;
}

function fillBody(body, message) {
  if (message.status === 'blocked' || message._blocked) {
    body.replaceChildren(el('p', { class: 'blocked-text', text: t(message._blocked === 'input' ? 'blocked_input' : 'blocked_output') }));
    return;
  }
  if (message.html) {
    setReplyHtml(body, message.html, t, copyText);
  } else if (message.content) {
    body.replaceChildren(el('p', { class: 'plain', text: message.content }));
  } else if (message.status === 'streaming') {
    body.replaceChildren(el('span', { class: 'typing', 'aria-label': t('status_streaming') }, el('i'), el('i'), el('i')));
  } else {
    body.replaceChildren();
  }
  if (message.status === 'streaming' && (message.html || message.content)) body.classList.add('cursor');
  else body.classList.remove('cursor');
}

function statusNote(message) {
  const key = { stopped: 'status_stopped', incomplete: 'status_incomplete', error: 'status_error' }[message.status];
  return key ? el('p', { class: `status-note ${message.status}`, text: t(key) }) : null;
}

function actionsOf(message) {
  const id = String(message.id);
  const bar = el('div', { class: 'actions' });
  const switcher = branchSwitcher(message);
  if (switcher) bar.append(switcher);
  const busy = !!state.stream;
  const blocked = message.status === 'blocked' || !!message._blocked;
  if (!blocked) {
    const copy = el('button', { type: 'button', class: 'icon tiny', 'aria-label': t('copy'), title: t('copy'), 'data-svg': 'copy' });
    copy.addEventListener('click', () => copyText(message.content || '', copy));
    bar.append(copy);
  }
  if (message.parent_id !== null && message.parent_id !== undefined && !message._local) {
    const regen = el('button', { type: 'button', class: 'icon tiny', testid: 'regenerate', 'aria-label': t('regenerate'), title: t('regenerate'), 'data-icon': '↻', disabled: busy });
    regen.addEventListener('click', () => regenerate(message.parent_id));
    bar.append(regen);
  }
  if (!message._local && !blocked) {
    const rating = message.feedback ? message.feedback.rating : null;
    const up = el('button', { type: 'button', class: 'icon tiny thumb' + (rating === 'up' ? ' chosen' : ''), testid: 'thumb-up', 'aria-label': t('thumb_up'), title: t('thumb_up'), 'aria-pressed': rating === 'up' ? 'true' : 'false', 'data-svg': 'up' });
    const down = el('button', { type: 'button', class: 'icon tiny thumb' + (rating === 'down' ? ' chosen' : ''), testid: 'thumb-down', 'aria-label': t('thumb_down'), title: t('thumb_down'), 'aria-pressed': rating === 'down' ? 'true' : 'false', 'aria-expanded': state.feedbackOpen === id ? 'true' : 'false', 'data-svg': 'down' });
    up.addEventListener('click', () => rate(message, rating === 'up' ? null : 'up'));
    down.addEventListener('click', () => { state.feedbackOpen = state.feedbackOpen === id ? null : id; rerenderMessage(id); focusFeedback(id); });
    bar.append(up, down);
    if (message._thanks) bar.append(el('span', { class: 'muted small thanks', role: 'status', text: t('feedback_thanks') }));
  }
  return bar;
}

function focusFeedback(id) {
  const node = messageNode(id);
  const field = node && node.querySelector('[data-testid="feedback-comment"]');
  if (field) field.focus();
}

function feedbackForm(message) {
  const fb = message.feedback || {};
  const form = el('form', { class: 'feedback-form', testid: 'feedback-form' });
  const commentId = `fb-comment-${message.id}`;
  const betterId = `fb-better-${message.id}`;
  const comment = el('textarea', { id: commentId, rows: 2, testid: 'feedback-comment' });
  comment.value = fb.comment || '';
  const better = el('textarea', { id: betterId, rows: 4, testid: 'feedback-better' });
  better.value = fb.better_answer || '';
  const submit = el('button', { type: 'submit', class: 'primary small', testid: 'feedback-submit', text: t('feedback_submit') });
  const cancel = el('button', { type: 'button', class: 'small', text: t('cancel') });
  cancel.addEventListener('click', () => { state.feedbackOpen = null; rerenderMessage(String(message.id)); });
  const buttons = el('div', { class: 'edit-buttons' }, cancel, submit);
  if (fb.rating === 'down') {
    const remove = el('button', { type: 'button', class: 'link small', text: t('feedback_remove') });
    remove.addEventListener('click', () => { state.feedbackOpen = null; rate(message, null); });
    buttons.prepend(remove);
  }
  form.append(
    el('p', { class: 'feedback-title', text: t('feedback_title') }),
    el('label', { for: commentId, text: t('feedback_comment') }), comment,
    el('label', { for: betterId, text: t('feedback_better') }), better,
    buttons);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    state.feedbackOpen = null;
    rate(message, 'down', { better_answer: better.value.trim() ? better.value : null, comment: comment.value.trim() ? comment.value : null });
  });
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); cancel.click(); } });
  return form;
}

async function rate(message, rating, extra = {}) {
  const body = { rating, ...extra };
  if (rating !== 'down') { body.better_answer = null; body.comment = null; }
  try {
    message.feedback = await api.feedback(message.id, body);
    message._thanks = rating !== null;
    setTimeout(() => { message._thanks = false; if (!state.stream) rerenderMessage(String(message.id)); }, 3000);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
  }
  rerenderMessage(String(message.id));
}

function messageNode(id) {
  return $('messages').querySelector(`li[data-message-id="${CSS.escape(String(id))}"]`);
}

function rerenderMessage(id) {
  const message = state.messages.get(String(id));
  const node = messageNode(id);
  if (!message || !node) { renderMessages(); return; }
  node.replaceWith(message.role === 'user' ? userNode(message, false) : assistantNode(message));
  scrollToEnd();
}

// In-place updates while streaming (the body and the step, not the whole list).
function updateStreaming(message, what) {
  const node = messageNode(message.id);
  if (!node) { renderMessages(); return; }
  if (what === 'step') {
    const old = node.querySelector('[data-testid="plugin-step"], .step-slot');
    const fresh = stepNode(message);
    if (old && fresh) old.replaceWith(fresh);
  } else {
    fillBody(node.querySelector('[data-testid="assistant-body"]'), message);
  }
  scrollToEnd();
}

function scrollToEnd(force = false) {
  const scroller = $('scroller');
  if (force || state.stick) scroller.scrollTop = scroller.scrollHeight;
}

async function copyText(text, button) {
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
  } catch (_) { /* fall back below */ }
  if (!ok) {
    const area = el('textarea', { class: 'clip', 'aria-hidden': 'true' });
    area.value = text;
    document.body.append(area);
    area.select();
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    area.remove();
  }
  if (ok && button) {
    button.classList.add('done');
    const label = button.getAttribute('aria-label');
    button.setAttribute('aria-label', t('copied'));
    setTimeout(() => { button.classList.remove('done'); button.setAttribute('aria-label', label); }, 1500);
  }
}

// ---------------------------------------------------------------- notices (429 / 503 / blocked / network)

function hideNotice() {
  clearInterval(state.noticeTimer);
  state.noticeTimer = null;
  state.retry = null;
  $('notice').hidden = true;
  $('notice').className = 'notice';
}

function showNotice(text, { retry = null, kind = 'info', countdown = null } = {}) {
  hideNotice();
  const notice = $('notice');
  notice.className = `notice ${kind}`;
  notice.hidden = false;
  state.retry = retry;
  $('retry').hidden = !retry;
  if (countdown) {
    let left = countdown.seconds;
    const tick = () => {
      $('notice-text').textContent = left > 0 ? t(countdown.key, { seconds: left }) : t(countdown.nowKey);
      if (left <= 0) { clearInterval(state.noticeTimer); state.noticeTimer = null; }
      left -= 1;
    };
    tick();
    state.noticeTimer = setInterval(tick, 1000);
  } else {
    $('notice-text').textContent = text;
  }
}

function showError(error, retry = null) {
  if (error instanceof ApiError) {
    if (error.status === 429 || error.status === 503) {
      const limited = error.status === 429;
      const seconds = Number.isFinite(error.retryAfter) ? Math.max(0, Math.ceil(error.retryAfter)) : 0;
      showNotice('', {
        retry, kind: 'warn',
        countdown: { seconds, key: limited ? 'rate_limited' : 'busy', nowKey: limited ? 'rate_limited_now' : 'busy_now' },
      });
      return;
    }
    if (error.code === 'moderation_blocked') { showNotice(t('blocked_input'), { kind: 'warn' }); return; }
    const known = error.code && t.has(`err_${error.code}`) ? t(`err_${error.code}`) : null;
    showNotice(known || t('err_generic', { message: error.message }), { retry, kind: 'error' });
    return;
  }
  showNotice(t('err_network'), { retry, kind: 'error' });
}

function envelopeError(event) {
  const err = (event && event.error) || {};
  const status = err.status || (err.code === 'rate_limited' || err.type === 'rate_limit_error' ? 429 : err.code === 'server_busy' || err.code === 'busy' || Number.isFinite(err.retry_after) ? 503 : 500);
  return new ApiError(status, { error: err }, Number.isFinite(err.retry_after) ? err.retry_after : null);
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

function loggingOff() {
  return !!(state.me && state.me.user && state.me.user.logging === false);
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

function sendFromComposer() {
  const composer = $('composer');
  const text = composer.value;
  if (!text.trim() || state.stream) return;
  composer.value = '';
  autogrow();
  startChat({ content: text, parent_id: lastAssistantId() }, { fromComposer: true });
}

function regenerate(userMessageId) {
  if (state.stream) return;
  const user = state.messages.get(String(userMessageId));
  if (loggingOff() && user) {
    // Nothing is stored for this user, so the server cannot regenerate: ask the same again.
    startChat({ content: user.content, parent_id: user.parent_id ?? null });
    return;
  }
  startChat({ regenerate: userMessageId });
}

// The messages from the first down to `id` (the history a reply to `id`'s child follows).
function pathTo(id) {
  const path = [];
  let message = id === null || id === undefined ? null : state.messages.get(String(id));
  for (let guard = 0; message && guard < 10000; guard++) {
    path.unshift(message);
    message = message.parent_id === null || message.parent_id === undefined ? null : state.messages.get(String(message.parent_id));
  }
  return path;
}

function localId(prefix) {
  state.localSeq += 1;
  return `${prefix}-${state.localSeq}`;
}

// One /api/chat call: `request` is {content, parent_id} or {regenerate}.
async function startChat(request, { fromComposer = false } = {}) {
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

function requestStop() {
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

// ---------------------------------------------------------------- settings panel

function fillSettings() {
  const s = state.settings || {};
  const box = $('settings-plugins');
  box.replaceChildren();
  const names = (state.config && state.config.plugins) || [];
  if (!names.length) box.append(el('p', { class: 'muted small', text: t('no_plugins') }));
  const on = new Set(s.plugins || []);
  for (const name of names) {
    const id = `plugin-${name}`;
    const input = el('input', { type: 'checkbox', id, value: name });
    input.checked = on.has(name);
    box.append(el('label', { class: 'check', for: id }, input, el('span', { text: name })));
  }
  const temp = Number.isFinite(s.temperature) ? s.temperature : 0.7;
  $('set-temperature').value = String(temp);
  $('temperature-out').textContent = Number(temp).toFixed(2);
  $('set-max-tokens').value = Number.isFinite(s.max_tokens) ? String(s.max_tokens) : '';
  const cap = state.config && state.config.max_tokens_cap;
  if (Number.isFinite(cap)) $('set-max-tokens').max = String(cap); else $('set-max-tokens').removeAttribute('max');
  $('set-system').value = s.system_prompt || '';
}

function openSettings() {
  fillSettings();
  $('settings-msg').textContent = '';
  $('settings-panel').hidden = false;
  $('settings-open').setAttribute('aria-expanded', 'true');
  $('settings-close').focus();
}

function closeSettings() {
  if ($('settings-panel').hidden) return;
  $('settings-panel').hidden = true;
  $('settings-open').setAttribute('aria-expanded', 'false');
  $('settings-open').focus();
}

async function saveSettings(e) {
  e.preventDefault();
  const plugins = [...$('settings-plugins').querySelectorAll('input[type=checkbox]')].filter((x) => x.checked).map((x) => x.value);
  const next = { plugins, temperature: parseFloat($('set-temperature').value) };
  const max = parseInt($('set-max-tokens').value, 10);
  if (Number.isFinite(max) && max > 0) next.max_tokens = max;
  const system = $('set-system').value;
  next.system_prompt = system.trim() ? system : null;
  try {
    state.settings = await api.putSettings(next);
    $('settings-msg').textContent = loggingOff() ? t('settings_not_stored') : t('saved');
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    $('settings-msg').textContent = error instanceof ApiError ? t('err_generic', { message: error.message }) : t('err_network');
  }
}

// ---------------------------------------------------------------- sidebar on narrow screens

function openSidebar() {
  document.body.classList.add('sidebar-open');
  $('backdrop').hidden = false;
  $('menu-open').setAttribute('aria-expanded', 'true');
  $('new-chat').focus();
}

function closeSidebar() {
  if (!document.body.classList.contains('sidebar-open')) return;
  document.body.classList.remove('sidebar-open');
  $('backdrop').hidden = true;
  $('menu-open').setAttribute('aria-expanded', 'false');
}

// ---------------------------------------------------------------- composer

function autogrow() {
  const area = $('composer');
  area.style.height = 'auto';
  const borders = area.offsetHeight - area.clientHeight;
  area.style.height = `${Math.min(area.scrollHeight + borders, Math.round(window.innerHeight * 0.4))}px`;
}

// ---------------------------------------------------------------- wiring and start

async function login(e) {
  e.preventDefault();
  const code = $('login-code').value.trim();
  const error = $('login-error');
  if (!code) { error.textContent = t('err_empty_code'); error.hidden = false; return; }
  $('login-submit').disabled = true;
  $('login-submit').textContent = t('login_busy');
  try {
    const me = await api.login(code);
    error.hidden = true;
    await enterApp(me);
  } catch (err) {
    const key = err instanceof ApiError && err.code && t.has(`err_${err.code}`) ? `err_${err.code}` : null;
    error.textContent = key ? t(key) : err instanceof ApiError ? t('err_generic', { message: err.message }) : t('err_network');
    error.hidden = false;
    $('login-code').focus();
    $('login-code').select();
  } finally {
    $('login-submit').disabled = false;
    $('login-submit').textContent = t('login_submit');
  }
}

async function logout() {
  if (state.stream) requestStop();
  try { await api.logout(); } catch (_) { /* the session may be gone already */ }
  state.me = null;
  state.conversations = [];
  resetConversation();
  hideNotice();
  $('composer').value = '';
  closeSettings();
  showLogin(null);
}

function wire() {
  $('login-form').addEventListener('submit', login);
  for (const button of document.querySelectorAll('[data-lang-toggle]')) button.addEventListener('click', toggleLang);
  $('composer-form').addEventListener('submit', (e) => { e.preventDefault(); sendFromComposer(); });
  $('composer').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); sendFromComposer(); }
  });
  $('composer').addEventListener('input', autogrow);
  window.addEventListener('resize', autogrow);
  $('stop').addEventListener('click', requestStop);
  $('new-chat').addEventListener('click', newChat);
  $('logout').addEventListener('click', logout);
  $('settings-open').addEventListener('click', () => ($('settings-panel').hidden ? openSettings() : closeSettings()));
  $('settings-close').addEventListener('click', closeSettings);
  $('settings-form').addEventListener('submit', saveSettings);
  $('set-temperature').addEventListener('input', () => { $('temperature-out').textContent = Number($('set-temperature').value).toFixed(2); });
  $('menu-open').addEventListener('click', openSidebar);
  $('close-menu').addEventListener('click', closeSidebar);
  $('backdrop').addEventListener('click', closeSidebar);
  $('retry').addEventListener('click', () => { const retry = state.retry; hideNotice(); if (retry) retry(); });
  $('notice-close').addEventListener('click', hideNotice);
  for (const button of document.querySelectorAll('[data-example]')) {
    button.addEventListener('click', () => {
      if (state.stream) return;
      $('composer').value = t(button.dataset.example);
      sendFromComposer();
    });
  }
  $('scroller').addEventListener('scroll', () => {
    const s = $('scroller');
    state.stick = s.scrollTop + s.clientHeight >= s.scrollHeight - 48;
  }, { passive: true });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('settings-panel').hidden) closeSettings();
    else closeSidebar();
  });
  api.onUnauthorized = sessionExpired;
}

async function main() {
  state.lang = initialLang();
  try {
    const response = await fetch('/static/i18n.json', { credentials: 'same-origin' });
    state.strings = await response.json();
  } catch (_) { /* the keys show; the page still works */ }
  wire();
  applyLang();
  try {
    state.config = await api.config();
  } catch (error) {
    showLogin(null);
    $('login-error').textContent = t('err_network');
    $('login-error').hidden = false;
    return;
  }
  try {
    const me = await api.me();
    await enterApp(me);
  } catch (error) {
    showLogin(null);
  }
}

main();
