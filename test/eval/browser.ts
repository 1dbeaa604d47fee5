/**
 * Opens a report in headless Chromium, as a reader would: the page's last script must have run (nothing before it
 * threw) and its SVG must be in the DOM; with `screenshot`, the page is also drawn to that PNG file. Where no
 * Chromium is installed the check says so visibly and passes.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { expect } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';

const chromiumArgs = () => [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  `--user-data-dir=${tempDir('chromium-')}`,
];

export function checkHtmlInBrowser(file: string, opts: { screenshot?: string } = {}): void {
  const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
  if (!chromium) {
    console.warn(`SKIPPED browser check of ${file}: no chromium installed (apt-get install chromium)`);
    return;
  }
  const run = (args: string[]) =>
    execFileSync(chromium, [...chromiumArgs(), ...args, `file://${file}`], {
      encoding: 'utf8',
      timeout: 60_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  const dom = run(['--dump-dom']);
  expect(dom).toContain('data-rendered="ok"'); // the last script ran: nothing before it threw
  expect(dom).toContain('<svg');
  if (opts.screenshot) {
    run([`--screenshot=${opts.screenshot}`, '--window-size=1200,1600', '--hide-scrollbars']);
    const png = fs.readFileSync(opts.screenshot);
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    // A blank page compresses to a few kB; a drawn table and plot do not.
    expect(png.length).toBeGreaterThan(20_000);
  }
}
