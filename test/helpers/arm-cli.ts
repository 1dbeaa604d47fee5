// Runs the CLI from source (tests spawn this with `node --import tsx`).
import { main } from '../../src/cli/main.js';
await main();
