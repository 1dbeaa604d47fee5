/**
 * The HTTP layer of hub downloads (checkpoint/hub.ts): one GET or HEAD over node:http/https whose connection and
 * every silence on it are bounded by timers (there is no total timeout: a slow link is fine, a dead one is not),
 * an abortable sleep for backoff, and which failures are worth another try.
 */
import http from 'node:http';
import https from 'node:https';

/** What a request needs of its download session: its abort signal and timeouts. */
export interface Connection {
  signal: AbortSignal;
  /** Longest wait for a TCP connection. */
  connectTimeoutMs: number;
  /** Longest wait with no bytes arriving, for headers or body. */
  idleTimeoutMs: number;
}

/** Worth another try: network trouble, timeouts, 5xx/429, a damaged part. `retryAfterMs` from the server. */
export class RetryableError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** Error codes of network trouble (a retry may get through). */
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'HPE_INVALID_CONSTANT',
]);

export function networkCode(e: unknown): string | undefined {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code && (NETWORK_CODES.has(code) || code.startsWith('HPE_'))) return code;
  return undefined;
}

/** No connection, or no bytes, within the session's timeouts. */
export class TimeoutError extends Error {}

export interface Exchange {
  res: http.IncomingMessage;
  /** Call on every body chunk: restarts the idle timer. */
  touch: () => void;
}

/**
 * One GET whose response arrives with its headers. A timer guards the connection (connectTimeoutMs) and then
 * every silence on it (idleTimeoutMs): the headers, and each body chunk (via `touch`), must come within that.
 */
export function get(
  s: Connection,
  url: URL,
  headers: Record<string, string>,
  method: 'GET' | 'HEAD' = 'GET',
): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    if (s.signal.aborted) {
      reject(new Error('aborted'));
      return;
    }
    const req = (url.protocol === 'https:' ? https : http).request(url, { method, headers });
    let response: http.IncomingMessage | undefined;
    let timer: NodeJS.Timeout | undefined;
    const fail = (e: Error) => {
      response?.destroy(e);
      req.destroy(e);
    };
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(new TimeoutError(`${what} ${url.host} for ${ms} ms`)), ms);
    };
    const onAbort = () => fail(new Error('aborted'));
    const done = () => {
      clearTimeout(timer);
      s.signal.removeEventListener('abort', onAbort);
    };
    s.signal.addEventListener('abort', onAbort, { once: true });
    arm(s.connectTimeoutMs, 'no connection to');
    req.on('socket', (socket) => {
      const connected = () => {
        if (!response) arm(s.idleTimeoutMs, 'no answer from');
      };
      if (socket.connecting) socket.once('connect', connected);
      else connected();
    });
    req.on('response', (res) => {
      response = res;
      arm(s.idleTimeoutMs, 'no bytes from');
      res.on('close', done);
      resolve({ res, touch: () => arm(s.idleTimeoutMs, 'no bytes from') });
    });
    req.on('error', (e) => {
      done();
      reject(e);
    });
    req.end();
  });
}

export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new Error('aborted'));
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Error('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
