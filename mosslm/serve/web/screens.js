// The login screen and the app screen, the session, and the language switch.
import { api, ApiError } from './api.js';
import { $, state, t, resetConversation } from './state.js';
import { hideNotice } from './notice.js';
import { renderHeader, renderMessages } from './messages.js';
import { loadConversations, renderConversations } from './sidebar.js';
import { autogrow, requestStop } from './composer.js';
import { fillSettings, closeSettings } from './panels.js';

// ---------------------------------------------------------------- language

const LANG_KEY = 'mosslm.lang';

export function initialLang() {
  const stored = localStorage.getItem(LANG_KEY);
  if (stored === 'zh' || stored === 'en') return stored;
  const nav = (navigator.languages && navigator.languages[0]) || navigator.language || 'en';
  return /^zh/i.test(nav) ? 'zh' : 'en';
}

export function applyLang() {
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

export function toggleLang() {
  state.lang = state.lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem(LANG_KEY, state.lang);
  applyLang();
}

// ---------------------------------------------------------------- screens

export function showLogin(messageKey) {
  $('app').hidden = true;
  $('login').hidden = false;
  const error = $('login-error');
  if (messageKey) { error.textContent = t(messageKey); error.hidden = false; } else { error.hidden = true; }
  $('login-submit').disabled = false;
  $('login-code').value = '';
  $('login-code').focus();
}

export async function enterApp(me) {
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

export function sessionExpired() {
  if (state.stream) { try { state.stream.controller.abort(); } catch (_) { /* already ended */ } }
  if (!state.me || state.config?.auth === 'none') return;
  state.me = null;
  showLogin('err_login_required');
}

export async function login(e) {
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

export async function logout() {
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
