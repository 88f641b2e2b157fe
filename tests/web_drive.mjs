// Drives a web export in headless Chromium, as a reader would: types a prime, presses
// Generate, reads the text. One browser for everything; prints one JSON object of what it
// typed, what it read, and every request that left the page's own origin.
//   node web_drive.mjs <node_modules dir> <chromium> <url> <prime> <num_chars> [<timed chars>]
import {createRequire} from 'node:module';
import {resolve} from 'node:path';

const [pwDir, chromium, url, prime, numChars, timedChars = '500'] = process.argv.slice(2);
const {chromium: launcher} = createRequire(`${resolve(pwDir)}/`)('playwright-core');

const browser = await launcher.launch({executablePath: chromium, args: ['--no-sandbox'], headless: true});
const result = {transcript: [], outside: [], errors: []};
try {
  const page = await browser.newPage();
  const origin = new URL(url).origin;
  page.on('request', (request) => {
    if (!request.url().startsWith(origin) && !request.url().startsWith('data:') &&
        !request.url().startsWith('blob:')) result.outside.push(request.url());
  });
  page.on('pageerror', (e) => result.errors.push(String(e)));

  const ready = async () => {
    await page.waitForFunction(() => !document.getElementById('generate').disabled, null, {timeout: 120000});
  };
  const run = async (what, {text, greedy, seed, length}) => {
    await page.fill('#prime', text);
    await page.fill('#length', String(Number(length)));
    await page.fill('#seed', seed === null ? '' : String(seed));
    await page.setChecked('#greedy', greedy);
    await page.click('#generate');
    await page.waitForFunction(() => document.getElementById('message').textContent ||
                                     document.getElementById('status').textContent === 'Done.', null,
                               {timeout: 120000});
    const read = {output: await page.textContent('#output'), message: await page.textContent('#message')};
    result.transcript.push({what, typed: {prime: text, greedy, seed, length: Number(length)}, read});
    await page.evaluate(() => { document.getElementById('status').textContent = ''; });
    return read;
  };

  await page.goto(url);
  await ready();
  result.greedy = (await run('greedy', {text: prime, greedy: true, seed: null, length: numChars})).output;
  result.seeded = [(await run('seeded', {text: prime, greedy: false, seed: 7, length: numChars})).output];
  await page.reload();
  await ready();
  result.seeded.push((await run('seeded, after a reload', {text: prime, greedy: false, seed: 7,
                                                            length: numChars})).output);
  result.unknown = (await run('unknown character', {text: prime + '\u00a7', greedy: true, seed: null,
                                                     length: 5})).message;
  // The API beside the page: per-step logits, and characters per second of a greedy text.
  Object.assign(result, await page.evaluate(async ([prime, timed]) => {
    const {load} = await import('./generator.js');
    const model = await load('.');
    const logits = await model.logits(prime);
    const start = performance.now();
    const text = await model.generate({prime, numChars: timed, greedy: true});
    const seconds = (performance.now() - start) / 1000;
    return {logits, charsPerSec: timed / seconds, long: text};
  }, [prime, Number(timedChars)]));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
