# demo and test are the quick start; images builds the container images. All install what they need.
.PHONY: demo test images
demo:
	./hack/demo.sh
test:
	./hack/test.sh
# Images of every binary, with OCI archives in target/images/ (README.md, "Images").
images:
	./hack/images.sh
