// The notice bar: 429 / 503 countdowns, blocked input, network errors, and its retry.
import { ApiError } from './api.js';
import { $, state, t } from './state.js';

// ---------------------------------------------------------------- notices (429 / 503 / blocked / network)

export function hideNotice() {
  clearInterval(state.noticeTimer);
  state.noticeTimer = null;
  state.retry = null;
  $('notice').hidden = true;
  $('notice').className = 'notice';
}

export function showNotice(text, { retry = null, kind = 'info', countdown = null } = {}) {
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

export function showError(error, retry = null) {
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

export function envelopeError(event) {
  const err = (event && event.error) || {};
  const status = err.status || (err.code === 'rate_limited' || err.type === 'rate_limit_error' ? 429 : err.code === 'server_busy' || err.code === 'busy' || Number.isFinite(err.retry_after) ? 503 : 500);
  return new ApiError(status, { error: err }, Number.isFinite(err.retry_after) ? err.retry_after : null);
}
