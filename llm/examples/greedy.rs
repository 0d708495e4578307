//! Greedy continuation of a prompt, tokenised by longest vocabulary match (a rough stand-in
//! for the real BPE tokenizer, which lives in the workload): `cargo run --release -p
//! mesh-llm --example greedy -- model.gguf "The capital of France is" 16`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("model file");
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let started = std::time::Instant::now();
    let model = mesh_llm::Llama::load(bytes, threads).expect("load");
    eprintln!("loaded in {:?}: {:?}", started.elapsed(), model.config());
    let vocab = model.gguf().get_strings("tokenizer.ggml.tokens").unwrap();
    let vocab: Vec<String> = vocab
        .iter()
        .map(|t| t.replace('Ġ', " ").replace('Ċ', "\n"))
        .collect();
    let prompt = args[2].replace("\\n", "\n");
    let mut tokens = Vec::new();
    let mut rest = prompt.as_str();
    while !rest.is_empty() {
        let (id, len) = vocab
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty() && rest.starts_with(t.as_str()))
            .map(|(i, t)| (i as u32, t.len()))
            .max_by_key(|&(_, l)| l)
            .expect("a token for every prefix");
        tokens.push(id);
        rest = &rest[len..];
    }
    if let Ok(ids) = std::env::var("TOKENS") {
        tokens = ids.split(',').map(|t| t.trim().parse().unwrap()).collect();
    }
    eprintln!("prompt tokens {tokens:?}");
    let n: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(16);
    let mut session = model.session(tokens.len() + n).unwrap();
    let started = std::time::Instant::now();
    let mut logits = model
        .forward(&mut session, &tokens, mesh_llm::model::Logits::Last)
        .unwrap();
    let prompt_time = started.elapsed();
    let mut top: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!(
        "top: {:?}",
        top[..5]
            .iter()
            .map(|(i, l)| (vocab[*i].clone(), *l))
            .collect::<Vec<_>>()
    );
    let started = std::time::Instant::now();
    let mut out = String::new();
    for _ in 0..n {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push_str(&vocab[next as usize]);
        if next == 2 {
            break;
        }
        logits = model
            .forward(&mut session, &[next], mesh_llm::model::Logits::Last)
            .unwrap();
    }
    let gen_time = started.elapsed();
    println!("{prompt}{out}");
    eprintln!(
        "prompt {} tokens in {prompt_time:?} ({:.1} tok/s); {n} generated in {gen_time:?} ({:.1} tok/s); kernels {}",
        tokens.len(),
        tokens.len() as f64 / prompt_time.as_secs_f64(),
        n as f64 / gen_time.as_secs_f64(),
        mesh_llm::quant::kernels().name
    );
}
