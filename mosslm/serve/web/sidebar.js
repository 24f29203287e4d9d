// The conversation list: load, draw, rename, delete, open, new chat; the sidebar on narrow screens.
import { api, ApiError } from './api.js';
import { el } from './render.js';
import { $, state, t, addMessage, resetConversation } from './state.js';
import { hideNotice, showError } from './notice.js';
import { renderHeader, renderMessages, scrollToEnd } from './messages.js';

// ---------------------------------------------------------------- conversations (sidebar)

export async function loadConversations() {
  try {
    const answer = await api.conversations();
    state.conversations = answer.data || [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
    return;
  }
  renderConversations();
}

export function renderConversations() {
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

export function newChat() {
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

export function touchConversation(conv) {
  if (!conv || conv.id === null || conv.id === undefined) return;
  state.conv = { ...(state.conv || {}), ...conv };
  state.conversations = [state.conv, ...state.conversations.filter((c) => c.id !== conv.id)];
  renderConversations();
  renderHeader();
}

// ---------------------------------------------------------------- sidebar on narrow screens

export function openSidebar() {
  document.body.classList.add('sidebar-open');
  $('backdrop').hidden = false;
  $('menu-open').setAttribute('aria-expanded', 'true');
  $('new-chat').focus();
}

export function closeSidebar() {
  if (!document.body.classList.contains('sidebar-open')) return;
  document.body.classList.remove('sidebar-open');
  $('backdrop').hidden = true;
  $('menu-open').setAttribute('aria-expanded', 'false');
}
