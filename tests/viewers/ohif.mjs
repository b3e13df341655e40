// OHIF Viewer v3 in headless Chromium (playwright-core), as a user reaches a study: the study
// list filtered by a patient's ID, then the viewer on one study. Prints one JSON line: what the
// list showed, whether the viewport showed an image (its canvas' pixels), and when a SEG's series
// description is given, whether that SEG opened over its image (coloured pixels on the grey); the
// DICOMweb requests OHIF made (method, path, status) and the browser's errors. A screenshot of
// each step is saved.
//
// node ohif.mjs <node_modules folder> <OHIF origin> <PatientID> <StudyInstanceUID> <screenshot prefix>
//               <text the list shows> [<the SEG's SeriesDescription>]
import { createRequire } from 'node:module';

const [modules, origin, patient, study, shots, listed, seg] = process.argv.slice(2);
const require = createRequire(`${modules}/`);
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--no-first-run', '--disable-dev-shm-usage'],
});
const result = { list: null, image: null, seg: null, timings: {}, requests: [], errors: [] };
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  await page.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  page.on('response', (response) => {
    const url = new URL(response.url());
    if (url.pathname.includes('/dicomweb')) {
      result.requests.push([response.request().method(), url.pathname + url.search, response.status()]);
    }
  });
  page.on('pageerror', (error) => result.errors.push(String(error)));
  page.on('requestfailed', (request) => result.errors.push(`failed: ${request.url()} ${request.failure()?.errorText}`));

  let started = performance.now();
  await page.goto(`${origin}/?mrn=${encodeURIComponent(patient)}`, { waitUntil: 'load' });
  await page.waitForFunction((text) => document.body.innerText.includes(text), listed, { timeout: 60000 });
  result.timings.list = (performance.now() - started) / 1000;
  result.list = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${shots}-study-list.png` });

  started = performance.now();
  await page.goto(`${origin}/viewer?StudyInstanceUIDs=${study}`, { waitUntil: 'load' });
  await page.waitForSelector('.cornerstone-canvas', { timeout: 60000 });
  const shown = await page.waitForFunction(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas || !canvas.width) return null;
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0, bright = 0;
    for (let k = 0; k < pixels.length; k += 4) {
      const level = Math.max(pixels[k], pixels[k + 1], pixels[k + 2]);
      if (level > 10) lit++;
      if (level > 200) bright++;
    }
    const total = pixels.length / 4;
    return lit > total * 0.05 && bright > 0 ? { width: canvas.width, height: canvas.height, lit, bright, total } : null;
  }, null, { timeout: 60000, polling: 50 });
  result.timings.viewer = (performance.now() - started) / 1000;  // to the first image shown
  result.image = await shown.jsonValue();
  await page.screenshot({ path: `${shots}-viewer.png` });

  if (seg) {
    // The SEG's thumbnail opened in the viewport, and OHIF's question answered as a user would.
    await page.getByText(seg, { exact: true }).first().dblclick();
    await page.getByRole('button', { name: 'Yes' }).click({ timeout: 30000 });
    const overlaid = await page.waitForFunction(() => {
      const canvas = document.querySelector('.cornerstone-canvas');
      const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let coloured = 0;
      for (let k = 0; k < pixels.length; k += 4) {
        const [r, g, b] = [pixels[k], pixels[k + 1], pixels[k + 2]];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
      }
      return coloured > pixels.length / 4 * 0.01 ? { coloured, total: pixels.length / 4 } : null;
    }, null, { timeout: 60000, polling: 50 });
    result.seg = await overlaid.jsonValue();
    await page.screenshot({ path: `${shots}-seg.png` });
  }
} catch (error) {
  result.errors.push(String(error));
  result.text = await page.evaluate(() => document.body.innerText).catch(() => null);
  await page.screenshot({ path: `${shots}-failed.png` }).catch(() => null);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
