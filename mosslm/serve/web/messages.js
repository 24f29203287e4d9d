// Drawing the conversation: the header, the list of messages, one message, in-place streaming updates.
import { el, pluginStep, setReplyHtml } from './render.js';
import { $, state, t, keyOf, childrenOf, currentPath } from './state.js';
import { regenerate, startChat } from './composer.js';
import { focusFeedback, feedbackForm, rate } from './panels.js';

// ---------------------------------------------------------------- header

export function renderHeader() {
  $('conv-title').textContent = state.conv ? (state.conv.title || t('untitled')) : t('new_chat');
  $('model-name').textContent = state.config && state.config.model ? t('model', { model: state.config.model }) : '';
}

// ---------------------------------------------------------------- rendering messages

export function renderMessages() {
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

export function messageNode(id) {
  return $('messages').querySelector(`li[data-message-id="${CSS.escape(String(id))}"]`);
}

export function rerenderMessage(id) {
  const message = state.messages.get(String(id));
  const node = messageNode(id);
  if (!message || !node) { renderMessages(); return; }
  node.replaceWith(message.role === 'user' ? userNode(message, false) : assistantNode(message));
  scrollToEnd();
}

// In-place updates while streaming (the body and the step, not the whole list).
export function updateStreaming(message, what) {
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

export function scrollToEnd(force = false) {
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
